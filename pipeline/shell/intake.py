"""Taking a run in: its identity (same spec, input, output and date is the same run), the
checks made before anything is recorded (the output location can be written, the service
answers), and recording it in one transaction: the run row, its items, its rejects and
`rejects.csv` (`create_run`).

The items are recorded in one streaming pass: each item row is written once, already packed
into its batch (state `in_batch`, carrying its batch id; its attempt row is written only when
its outcome is known), so a million-row table is read, checked and recorded without a second
pass over the items. Items come column by column (`table.Items`, a block at a time) and are
hashed, packed and written a slice at a time, with no object per row.

Items whose image name is taken at the output location (`taken`) are recorded failed for good
and never packed, so nothing is sent for them. Items whose content another run already
stored stay `queued`: the tick serves them from the prompt cache or, on a miss, forms them
into batches then (`submit.form_batches`, which also packs retried items). Everything
happens in the ledger's recording transaction (`Ledger.recording`, a unit of work that
commits when its block ends): a crash records nothing.

The first batches' JSONL files are written to the spool folder as they are packed, from the
lines measured for packing (`shardfile`), so the first tick uploads them without reading the
rows back. Later batches wait, possibly for hours, for quota: their files are built when they
are submitted, which keeps the spool folder to a bounded size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.adapters import inputs, shardfile
from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import Recording
from pipeline.adapters.log import get_logger
from pipeline.adapters.references import ReferenceBook
from pipeline.core import expand, shard, table
from pipeline.core.catalog import Catalog
from pipeline.core.errors import ApiError, AuthError, StorageError
from pipeline.core.spec import ChannelSpec, JobSpec, resolve_output_uri, spec_record
from pipeline.core.values import usd_to_nanos
from pipeline.shell import location, uploads
from pipeline.shell.context import Context
from pipeline.shell.location import Listing
from pipeline.shell.reporting import write_tables
from pipeline.shell.taken import TakenNames

log = get_logger()

# ── runs ─────────────────────────────────────────────────────────────────────


def run_identity(spec: JobSpec, input_sha: str, output_template: str, date: str, nonce: str) -> str:
    """Same spec + same input + same resolved output (+ date) = same run."""
    canonical = json.dumps(
        {"spec": spec_record(spec), "input": input_sha, "output": output_template, "date": date},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((canonical + nonce).encode()).hexdigest()


def _spec_json(spec: JobSpec) -> str:
    """The spec as recorded with its run (`runs.spec_json`)."""
    return json.dumps(spec_record(spec), default=str, sort_keys=True)


def latest_active_run(ctx: Context, spec: JobSpec) -> str | None:
    """The newest active run of this spec's identity (same spec, input and date; the output
    template is part of the spec), whether or not it was started with --force: the run
    `run SPEC` resumes. None when there is none."""
    date = ctx.now().strftime("%Y-%m-%d")
    input_sha = inputs.file_sha256(spec.input.path)
    found = ctx.ledger.latest_active_run_like(spec.name, _spec_json(spec), input_sha, date)
    return found.id if found is not None else None


def create_run(
    ctx: Context, spec: JobSpec, catalog: Catalog, *, force: bool = False, use_cache: bool = True
) -> tuple[str, bool]:
    """Record the run, its items and rejects (one transaction), write rejects.csv.

    Returns (run id, created). An existing identical run is returned as is, spending nothing.
    The output location and the service (key and endpoint) are checked first, so a run is
    only recorded when its work can be sent. Items whose image name is taken at the output
    location are recorded failed for good (`taken`). Side effects: ledger rows;
    `rejects.csv` (and, when items failed or the location is shared, the manifest tables)
    in the run's output location.
    """
    now = ctx.now()
    date = now.strftime("%Y-%m-%d")
    input_sha = inputs.file_sha256(spec.input.path)
    nonce = now.isoformat() if force else ""
    identity = run_identity(spec, input_sha, spec.output.uri, date, nonce)
    existing = ctx.ledger.find_run_by_identity(identity)
    if existing is not None:
        return existing.id, False
    run_id = f"{spec.name}-{now.strftime('%Y%m%d')}-{identity[:8]}"
    output_uri = resolve_output_uri(spec.output.uri, job=spec.name, date=date, run=run_id)
    store = ctx.store(output_uri)
    try:
        store.check_writable()
    except StorageError as exc:
        raise StorageError(
            f"{exc}. Nothing was recorded and nothing was spent; submit again once it can be "
            "written."
        ) from exc
    check_service(ctx, spec.channel)
    # Listed before the recording transaction opens: a long listing holds no ledger lock.
    with Listing.of(store) as listing:
        _record_run(
            ctx, spec, catalog, run_id, identity, input_sha, output_uri, date, use_cache, listing
        )
    return run_id, True


def check_service(ctx: Context, channel: ChannelSpec | None = None) -> None:
    """One cheap call to the service before a run is recorded: a refused or missing key
    (AuthError, exit 2) or an unreachable service (exit 1) then leaves nothing behind that a
    later submit would mistake for the run. A Vertex channel's staging prefix must take a
    file too (StorageError, exit 1)."""
    channel = channel or ChannelSpec()
    variable = "GOOGLE_VERTEX_BASE_URL" if channel.is_vertex else "GOOGLE_GEMINI_BASE_URL"
    try:
        ctx.channel_backend(channel).check_access()
    except AuthError as exc:
        raise AuthError(f"{exc}; nothing was recorded", code=exc.code) from None
    except StorageError as exc:
        raise StorageError(
            f"{exc}. Nothing was recorded and nothing was spent; submit again once the "
            "staging prefix can be written."
        ) from None
    except ApiError as exc:
        raise type(exc)(
            f"{exc}; nothing was recorded: check the network and {variable} "
            "(unset it for the real service), then submit again",
            code=exc.code,
        ) from None


def _record_run(
    ctx: Context,
    spec: JobSpec,
    catalog: Catalog,
    run_id: str,
    identity: str,
    input_sha: str,
    output_uri: str,
    date: str,
    use_cache: bool,
    listing: Listing,
) -> None:
    from pipeline.shell.planning import expansion, nothing_to_do

    info = catalog.for_channel(spec.channel.kind).get(spec.model)
    now = ctx.now()
    values = _run_values(spec, run_id, identity, input_sha, output_uri, date, now, use_cache)
    with ctx.ledger.recording(values) as rec:
        taken = None
        if not spec.output.overwrite:
            neighbours = location.runs_among(ctx, rec.tables.run_outputs(), output_uri)
            taken = TakenNames(run_id, ctx.store(output_uri), listing, neighbours)
        book = None
        if spec.input.images:
            book = ReferenceBook(spec.source.parent, gcs=uploads.gcs_opener(ctx))
        done = record_expansion(
            rec,
            spec,
            expansion(spec, info, book),
            now,
            use_cache=use_cache,
            spool=ctx.settings.spool_dir,
            taken=taken,
        )
        if done.items == 0:  # raised inside the transaction: nothing is recorded
            raise nothing_to_do(spec, done.rejects)
        rec.counts(done.items, done.rejects, done.est_nanos)
        # Written before the commit: a crash leaves no run, and a rerun rewrites the same files.
        write_tables(
            ctx,
            rec.tables,
            rec.run(),
            manifest=done.failed > 0,
            rejects=True,
            present=listing.tables,
        )
    log.info(
        "run_created",
        run=run_id,
        items=done.items,
        rejected=done.rejects,
        batches=done.batches,
        name_taken=done.failed,
    )


def _run_values(
    spec: JobSpec,
    run_id: str,
    identity: str,
    input_sha: str,
    output_uri: str,
    date: str,
    now: datetime,
    use_cache: bool,
) -> dict[str, Any]:
    limits = shard.limits_for(spec)
    budget = spec.limits.budget_usd
    return {
        "id": run_id,
        "identity": identity,
        "job": spec.name,
        "state": "active",
        "model": spec.model,
        "fallback_model": spec.fallback_model,
        "spec_path": str(spec.source),
        "spec_json": _spec_json(spec),
        "input_sha256": input_sha,
        "output_uri": output_uri,
        "run_date": date,
        "max_attempts": spec.limits.max_attempts,
        "max_enqueued_tokens": limits.max_tokens,
        "max_requests_per_batch": limits.max_requests,
        "max_batch_bytes": limits.max_bytes,
        "budget_nanos": usd_to_nanos(budget) if budget is not None else None,
        "overwrite": spec.output.overwrite,
        "use_cache": use_cache,
        "created_at": now,
        "channel": spec.channel.to_json(),
        "webhook_url": spec.notify.webhook_url,
    }


# ── items, packed into batches in one pass ───────────────────────────────────

CHUNK = 5000
"""Rows per executemany, and per prompt-cache lookup."""
WRITTEN_BATCHES = 100
"""Batches whose files are written while the run is recorded: the service's live-batch limit,
so at most what one tick can submit."""


@dataclass
class Recorded:
    items: int = 0
    rejects: int = 0
    failed: int = 0
    """Items failed for good before anything was sent (their name is taken)."""
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
        rec: Recording,
        spec: JobSpec,
        now: datetime,
        use_cache: bool,
        spool: Path | None,
        taken: TakenNames | None,
    ):
        self.rec, self.run_id, self.model, self.now = rec, rec.run_id, spec.model, now
        # Lines with reference images name their uploads, made when the batch is created:
        # their files are built then, not now.
        self.spool = None if spec.input.images else spool
        self.rich = bool(spec.input.images) or spec.input.variants > 1
        self.taken = taken if taken is not None and not taken.idle else None
        self.written: list[shardfile.ShardWriter] = []
        """Files written so far: removed again if the run is not recorded."""
        # A ledger with no stored image of another run cannot serve this one from the cache.
        self.use_cache = use_cache and rec.any_stored_image()
        self.packer = shard.Packer(shard.limits_for(spec))
        self.batch: _OpenBatch | None = None
        self.done = Recorded()

    def items(self, items: table.Items) -> None:
        """Record a slice of items: cached content stays queued (the cache or, on a miss,
        `form_batches` checks its name later), items whose name is taken fail, the rest is
        packed."""
        if items.refs:
            distinct = {ref.sha256: ref for refs in items.refs for ref in refs}
            self.rec.references(distinct.values())
        hashes = expand.prompt_hashes(self.model, items)
        self.done.items += len(items)
        self.done.est_nanos += sum(e.batch_nanos for e in items.estimates)
        hits = self.rec.cached_hashes(hashes) if self.use_cache else set()
        if hits:
            cached = [i for i, sha in enumerate(hashes) if sha in hits]
            queued = items.pick(cached)
            self._write(queued, [hashes[i] for i in cached], queued.tokens(), "queued", None)
            rest = [i for i, sha in enumerate(hashes) if sha not in hits]
            items, hashes = items.pick(rest), [hashes[i] for i in rest]
        if len(items) and self.taken is not None:
            items, hashes = self._fail_taken(self.taken, items, hashes)
        if len(items):
            self._pack(items, hashes)

    def _fail_taken(
        self, taken: TakenNames, items: table.Items, hashes: list[str]
    ) -> tuple[table.Items, list[str]]:
        """Record the items whose name is taken as failed for good; return the others."""
        reasons = taken.among_with(self.rec.open_keys, items.keys)
        if not reasons:
            return items, hashes
        failed = sorted(reasons)
        part = items.pick(failed)
        self._write(part, [hashes[i] for i in failed], part.tokens(), "failed", None)
        self.rec.fail_for_good([(items.keys[i], reasons[i]) for i in failed], "failed", self.now)
        self.done.failed += len(failed)
        self.done.est_nanos -= sum(e.batch_nanos for e in part.estimates)  # never sent
        keep = [i for i in range(len(items)) if i not in reasons]
        return items.pick(keep), [hashes[i] for i in keep]

    def _pack(self, items: table.Items, hashes: list[str]) -> None:
        """Split the items where the packer opens a batch; each run of them goes to its batch
        (the first run to the batch already open, if it does not start a new one)."""
        # Only written files need the lines themselves; packing needs their lengths.
        lines = expand.request_lines(items) if self.spool is not None else None
        sizes = list(map(len, lines)) if lines is not None else expand.line_lengths(items)
        tokens = items.tokens()
        bounds = [*self.packer.starts(sizes, tokens), len(items)]
        if bounds[0] > 0:
            self._add(items, hashes, lines, tokens, 0, bounds[0])
        for start, stop in itertools.pairwise(bounds):
            self._open_batch()
            self._add(items, hashes, lines, tokens, start, stop)

    def _add(
        self,
        items: table.Items,
        hashes: list[str],
        lines: list[bytes] | None,
        tokens: list[int],
        start: int,
        stop: int,
    ) -> None:
        """Items [start, stop) of these parallel lists into the open batch."""
        batch = self.batch
        assert batch is not None  # the first item always opens one
        part, part_tokens = items.slice(start, stop), tokens[start:stop]
        batch.items += len(part)
        batch.tokens += sum(part_tokens)
        batch.nanos += sum(e.batch_nanos for e in part.estimates)
        self._write(part, hashes[start:stop], part_tokens, "in_batch", batch.id)
        if batch.file is not None and lines is not None:
            batch.file.write(b"".join(lines[start:stop]))

    def _write(
        self,
        items: table.Items,
        hashes: list[str],
        tokens: list[int],
        state: str,
        batch_id: int | None,
    ) -> None:
        """Insert the items' rows (`runs.ITEM_ROW` order), all in `state` and `batch_id`."""
        if not len(items):
            return
        extra: list[Any] = []
        if self.rich:
            extra = [items.seeds or itertools.repeat(None), items.ref_text()]
        rows = list(
            # strict=False: repeat() is endless; the zip ends with the item columns.
            zip(
                itertools.repeat(self.run_id),
                items.keys,
                items.rows,
                items.prompts,
                hashes,
                items.ratios,
                items.sizes,
                itertools.repeat(self.model),
                tokens,
                *extra,
                strict=False,
            )
        )
        self.rec.items(rows, state=state, batch_id=batch_id, rich=self.rich)

    def _open_batch(self) -> None:
        self.close()
        opened = self.rec.open_batch(self.model, self.now)
        self.batch = _OpenBatch(opened, self.spool)
        if self.batch.file is not None:
            self.written.append(self.batch.file)
        self.done.batches += 1

    def close(self) -> None:
        """Close the batch being filled (its items are already written)."""
        if self.batch is None:
            return
        batch, self.batch = self.batch, None
        sha = batch.file.finish() if batch.file is not None else None
        crashpoint("record.batch_closed")
        self.rec.close_batch(
            batch.id,
            self.model,
            batch.items,
            batch.tokens,
            batch.nanos,
            self.now,
            sha,
        )

    def discard_files(self) -> None:
        for file in self.written:
            file.discard()


def record_expansion(
    rec: Recording,
    spec: JobSpec,
    blocks: Iterable[table.Expanded],
    now: datetime,
    *,
    use_cache: bool,
    spool: Path | None = None,
    taken: TakenNames | None = None,
) -> Recorded:
    """Write the run's items (packed into queued batches) and rejects; return the counts.
    With `spool`, the first batches' files are written there too (removed again on error).
    With `taken`, items whose image name is taken at the output location fail for good."""
    recorder = _Recorder(rec, spec, now, use_cache, spool, taken)
    try:
        _record(recorder, rec, blocks)
    except BaseException:
        recorder.discard_files()
        raise
    return recorder.done


def _record(recorder: _Recorder, rec: Recording, blocks: Iterable[table.Expanded]) -> None:
    for block in blocks:
        items = block.items
        for start in range(0, len(items), CHUNK):
            recorder.items(items.slice(start, start + CHUNK))
        rejects = block.rejects
        recorder.done.rejects += len(rejects)
        for start in range(0, len(rejects), CHUNK):
            rec.rejects(
                [
                    {"run_id": rec.run_id, "row": r.row, "key": r.key, "reason": r.reason}
                    for r in rejects[start : start + CHUNK]
                ]
            )
    recorder.close()
