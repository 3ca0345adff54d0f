"""Recording a new run's table in the ledger in one streaming pass: each item row is written
once, already packed into its batch (state `in_batch`, with its attempt row), so a
million-row table is read, checked and recorded without a second pass over the items.

Items whose content another run already stored stay `queued`: the tick serves them from the
prompt cache or, on a miss, forms them into batches then (`submit.form_batches`, which also
packs retried items). Everything happens in the caller's transaction: a crash records nothing.

The first batches' JSONL files are written to the spool folder as they are packed, from the
lines measured for packing (`shardfile`), so the first tick uploads them without reading the
rows back. Later batches wait, possibly for hours, for quota: their files are built when they
are submitted, which keeps the spool folder to a bounded size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import expand, shard, shardfile
from pipeline.drill import crashpoint
from pipeline.ledger import repo
from pipeline.spec import JobSpec

CHUNK = 5000
"""Rows per executemany, and per prompt-cache lookup."""
WRITTEN_BATCHES = 100
"""Batches whose files are written while the run is recorded: the service's live-batch limit,
so at most what one tick can submit."""


@dataclass
class Recorded:
    items: int = 0
    rejects: int = 0
    batches: int = 0
    est_nanos: int = 0
    """Batch-price estimate of every item."""


class _OpenBatch:
    """The batch being filled: its id, running totals and, for the first ones, its file."""

    def __init__(self, opened: repo.OpenedBatch, spool: Path | None) -> None:
        self.id = opened.id
        self.items = self.tokens = self.nanos = 0
        self.file: shardfile.ShardWriter | None = None
        if spool is not None and opened.seq <= WRITTEN_BATCHES:
            self.file = shardfile.ShardWriter(spool, opened.display_name)


class _Recorder:
    def __init__(
        self,
        conn: Any,
        run_id: str,
        spec: JobSpec,
        now: datetime,
        use_cache: bool,
        spool: Path | None,
    ):
        self.conn, self.run_id, self.model, self.now = conn, run_id, spec.model, now
        self.spool = spool
        self.written: list[shardfile.ShardWriter] = []
        """Files written so far: removed again if the run is not recorded."""
        # A ledger with no stored image of another run cannot serve this one from the cache.
        self.use_cache = use_cache and repo.any_stored_image(conn, run_id)
        self.packer = shard.Packer(shard.limits_for(spec))
        self.batch: _OpenBatch | None = None
        self.rows: list[tuple[Any, ...]] = []
        """Rows of the batch being filled, not yet written."""
        self.lines: list[bytes] = []
        """Their request lines, for the batch's file."""
        self.queued: list[tuple[Any, ...]] = []
        """Rows of cache hits, not yet written."""
        self.done = Recorded()

    def items(self, chunk: list[expand.Item]) -> None:
        """Record a chunk of items: cached content stays queued, the rest is packed."""
        model = self.model
        hashes = [
            expand.prompt_sha256(model, i.prompt, i.aspect_ratio, i.image_size) for i in chunk
        ]
        hits = repo.cached_hashes(self.conn, hashes, self.run_id) if self.use_cache else set()
        for item, sha in zip(chunk, hashes, strict=True):
            self.done.items += 1
            self.done.est_nanos += item.estimate.batch_nanos
            if sha in hits:
                self.queued.append(self._row(item, sha))
                continue
            line = expand.request_line(item.key, item.prompt, item.aspect_ratio, item.image_size)
            if self.packer.add(len(line), item.est_tokens):
                self._open_batch()
            batch = self.batch
            assert batch is not None  # the first item always opens one
            batch.items += 1
            batch.tokens += item.est_tokens
            batch.nanos += item.estimate.batch_nanos
            self.rows.append(self._row(item, sha))
            self.lines.append(line)
        self._flush()

    def _row(self, item: expand.Item, sha: str) -> tuple[Any, ...]:
        """The item's row in repo.ITEM_ROW order (its state and batch are the same for a
        whole write)."""
        return (
            self.run_id,
            item.key,
            item.row,
            item.prompt,
            sha,
            item.aspect_ratio,
            item.image_size,
            self.model,
            item.est_tokens,
        )

    def _flush(self) -> None:
        if self.rows:
            batch = self.batch
            assert batch is not None  # rows are only added to an open batch
            repo.insert_items(self.conn, self.rows, state="in_batch", batch_id=batch.id)
            if batch.file is not None:
                batch.file.write(b"".join(self.lines))
            self.rows, self.lines = [], []
        repo.insert_items(self.conn, self.queued, state="queued", batch_id=None)
        self.queued = []

    def _open_batch(self) -> None:
        self.close()
        opened = repo.open_batch(self.conn, self.run_id, self.model, self.now)
        self.batch = _OpenBatch(opened, self.spool)
        if self.batch.file is not None:
            self.written.append(self.batch.file)
        self.done.batches += 1

    def close(self) -> None:
        """Close the batch being filled (its items are written first: its attempts need them)."""
        if self.batch is None:
            return
        self._flush()
        batch, self.batch = self.batch, None
        sha = batch.file.finish() if batch.file is not None else None
        crashpoint("record.batch_closed")
        repo.close_batch(
            self.conn, self.run_id, batch.id, batch.items, batch.tokens, batch.nanos, self.now, sha
        )

    def discard_files(self) -> None:
        for file in self.written:
            file.discard()


def record_expansion(
    conn: Any,
    run_id: str,
    spec: JobSpec,
    entries: Iterable[expand.Item | expand.Reject],
    now: datetime,
    *,
    use_cache: bool,
    spool: Path | None = None,
) -> Recorded:
    """Write the run's items (packed into queued batches) and rejects; return the counts.
    With `spool`, the first batches' files are written there too (removed again on error)."""
    recorder = _Recorder(conn, run_id, spec, now, use_cache, spool)
    try:
        _record(recorder, conn, run_id, entries)
    except BaseException:
        recorder.discard_files()
        raise
    return recorder.done


def _record(
    recorder: _Recorder, conn: Any, run_id: str, entries: Iterable[expand.Item | expand.Reject]
) -> None:
    items: list[expand.Item] = []
    rejects: list[dict[str, Any]] = []
    for entry in entries:
        if isinstance(entry, expand.Reject):
            rejects.append(
                {"run_id": run_id, "row": entry.row, "key": entry.key, "reason": entry.reason}
            )
            if len(rejects) >= CHUNK:
                recorder.done.rejects += len(rejects)
                repo.insert_rejects(conn, rejects)
                rejects = []
            continue
        items.append(entry)
        if len(items) >= CHUNK:
            recorder.items(items)
            items = []
    recorder.items(items)
    recorder.close()
    recorder.done.rejects += len(rejects)
    repo.insert_rejects(conn, rejects)
