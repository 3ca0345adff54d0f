"""Harvesting exactly once: stream a finished batch's results file to a spool file
(`adapters.spool`, a download thread), parse it line by line in a small thread pool and
store each final image once (`harvest_lines`), and record each attempt's outcome, tokens
and cost in the ledger, many lines per transaction (here: every ledger call of a harvest).

Order matters for crash safety: an image is stored before its attempt is recorded, and a
recorded attempt is never recorded again (its row is inserted once, under UNIQUE(item_id,
batch_id, duplicate)). A replay after a kill re-reads the spool file, adopts objects already
stored with the same sha256, and skips attempts already recorded. Nothing is paid twice
because nothing is created again.

Paid results never wait on storage: the download runs to its end in its own thread whatever
the storing does, so a harvest stopped by its run's storage (the run is then held, see
`holds`) leaves the whole results file in the spool, and `spool_batch` downloads a held
run's finished batches without storing anything. A held run's later harvest, or the
`cancel` that ends it (`unstored`: every line recorded with its cost, nothing stored),
reads the spool file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import Settle
from pipeline.adapters.log import get_logger
from pipeline.adapters.spool import ResultsSpool, Span
from pipeline.adapters.storage import ObjectStore
from pipeline.core import policy
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.reasons import ReasonCode
from pipeline.core.states import ItemState
from pipeline.shell import uploads
from pipeline.shell.context import Context, channel_of
from pipeline.shell.harvest_lines import (
    KeyState,
    LineRouter,
    Record,
    empty,
    ordered,
    ready,
    result,
)

log = get_logger()
COMMIT_EVERY = 200
LEASE_TTL_S = 60.0


# ── one batch ────────────────────────────────────────────────────────────────


def harvest_batch(
    ctx: Context,
    batch: repo.BatchRow,
    run: repo.RunRow,
    catalog: Catalog,
    *,
    unstored: str | None = None,
) -> bool:
    """Harvest one `done` batch. False when another tick holds it or harvested it already.

    With `unstored` (the run was cancelled and its storage cannot be used), nothing is
    stored: every line is recorded with its tokens and cost, and its item, succeeded or to
    be retried, is cancelled with `unstored` as the reason.

    Side effects: a spool file under the state folder (complete even when storing fails;
    deleted at the end), one object per succeeded item in the run's output store, attempt
    and item rows, the batch `harvested`.
    """
    owner = ctx.settings.worker_id
    with ctx.ledger.holding_batch(batch.id, owner, ctx.now(), LEASE_TTL_S, ("done",)) as held:
        if held is None:
            return False
        spool = _spool(ctx, held, run)
        lines = spool.lines()
        try:
            _Harvest(ctx, held, run, catalog, unstored).consume(lines)
        finally:
            lines.close()  # a harvest its storage stopped still gets the whole file spooled
        crashpoint("harvest.harvested")
        spool.remove()
        return True


def spool_batch(ctx: Context, batch: repo.BatchRow, run: repo.RunRow) -> bool:
    """Download a `done` batch's results file to the spool, storing nothing (its run is
    held). False when another tick holds the batch or it is no longer done; True when the
    file is in the spool."""
    owner = ctx.settings.worker_id
    with ctx.ledger.holding_batch(batch.id, owner, ctx.now(), LEASE_TTL_S, ("done",)) as held:
        if held is None:
            return False
        _spool(ctx, held, run).fetch()
        return True


def _spool(ctx: Context, batch: repo.BatchRow, run: repo.RunRow) -> ResultsSpool:
    backend = ctx.backend_for(run)

    def download(part: Path) -> int:
        assert batch.output_file, f"batch {batch.display_name} has no output file"
        return backend.download(batch.output_file, part)

    fields = {"run": batch.run_id, "batch": batch.display_name}
    return ResultsSpool(ctx.settings.spool_dir, batch.display_name, download, fields)


class _Harvest(LineRouter):
    def __init__(
        self,
        ctx: Context,
        batch: repo.BatchRow,
        run: repo.RunRow,
        catalog: Catalog,
        unstored: str | None = None,
    ):
        self.ctx, self.batch, self.run = ctx, batch, run
        self.unstored = unstored
        self.info = catalog.for_channel(channel_of(run).kind).get(batch.model)
        self.store: ObjectStore = ctx.store(run.output_uri)
        if unstored is None and hasattr(self.store, "connect"):
            # Before the download starts: a client's imports hold the interpreter for a
            # third of a second, which the download thread would otherwise wait through.
            self.store.connect()
        start = ctx.ledger.harvest_start(batch.id)
        rows, self.prior, self.upload_shas = start.rows, start.prior, start.upload_shas
        self.todo = {r.key: r for r in rows if r.outcome is None}
        self.rows = {r.key: r for r in rows}
        self.keys: dict[str, KeyState] = {}
        """Keys met in the file so far, in the order their lines came."""
        self.gone: set[str] = set()
        """Uploads lines found gone or expired (marked stale before their lines' records)."""

    def consume(self, lines: Iterator[Span]) -> None:
        """Parse lines in a pool, route them in file order (which line of a key wins, which
        are billed duplicates), store the winners' images in a second pool, and commit
        records in routing order, many per transaction. In flight: at most a window of lines
        being parsed and, stored, a window or the store's `puts_in_flight` (a remote store
        waits out a round trip per put) and a worker's worth more (bounded memory).

        Two pools, not one: a store queued behind the next window of parses held the routing
        thread back (a harvest benchmark of 300 MB went from about 0.97 of the floor to
        0.84 with one pool, and back with two)."""
        pending: list[Record] = []
        workers = max(1, self.ctx.settings.harvest_workers)
        window = workers * 2
        puts = max(workers, self.store.puts_in_flight or workers)
        outq: deque[Future[Record] | Record] = deque()
        with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(puts) as stores:
            for line in ordered(pool, self._parse, self._fresh_lines(lines), window):
                if line is not None:
                    outq.extend(self._route(line, stores))
                # Records wait in file order: room for every put in flight, and the
                # workers' worth more (a local folder: the window it always had).
                while outq and (len(outq) > max(window, puts + workers) or ready(outq[0])):
                    pending.append(result(outq.popleft()))
                    if len(pending) >= COMMIT_EVERY:
                        self._commit(pending)
                        pending = []
            pending.extend(result(r) for r in outq)
        pending.extend(self._undecided())
        self._finish(pending)

    def _commit(self, records: list[Record]) -> None:
        attempts = [r for r in records if r.duplicate == 0]
        duplicates = [r for r in records if r.duplicate > 0]
        now = self.ctx.now()
        if self.unstored is None:
            self.store.sync()  # the images these records point at are on disk first
        # Before the items go back to the queue: a batch formed from them must not reuse it.
        uploads.mark_gone(self.ctx, self.gone)
        self.ctx.ledger.record_lines(
            self.run.id,
            self.batch,
            outcomes_of(self.run, self.batch, attempts, self.rows),
            [_billed(r) for r in duplicates],
            now,
        )
        crashpoint("harvest.committed")
        self.ctx.ledger.claim_batch(self.batch.id, self.ctx.settings.worker_id, now, LEASE_TTL_S)

    def _finish(self, pending: list[Record]) -> None:
        self._commit(pending)
        # A line missing from the output is retried, whatever the batch's end (a Vertex job
        # that ran out of time keeps the rows it finished), unless the run was cancelled.
        retry = self.run.state != "cancelled" and self.unstored is None
        missing_kind: policy.Outcome = "retry" if retry else "cancelled"
        missing = [
            empty(r, missing_kind, "missing from the results file", ReasonCode.MISSING)
            for key, r in self.todo.items()
            if key not in self.keys
        ]
        now = self.ctx.now()
        crashpoint("harvest.finish")
        self.ctx.ledger.batch_harvested(
            self.run.id,
            self.batch,
            outcomes_of(self.run, self.batch, missing, self.rows),
            now,
            f"{len(self.keys)} keys, {len(missing)} missing",
        )
        log.info(
            "batch_harvested",
            run=self.run.id,
            batch=self.batch.display_name,
            keys=len(self.keys),
            missing=len(missing),
            duplicates=sum(k.duplicates for k in self.keys.values()),
        )


def _billed(rec: Record) -> repo.BilledDuplicate:
    return repo.BilledDuplicate(
        rec.item_id,
        rec.duplicate,
        rec.reason,
        rec.code,
        rec.usage,
        rec.cost_nanos,
        rec.standard_nanos,
    )


# ── writing outcomes ─────────────────────────────────────────────────────────


def outcomes_of(
    run: repo.RunRow, batch: repo.BatchRow, records: list[Record], rows: dict[str, Any]
) -> list[repo.AttemptOutcome]:
    """Each record's outcome with its item's next state, decided by the policy."""
    return [_outcome(rec, rows[rec.key], run, batch) for rec in records]


def _outcome(rec: Record, row: Any, run: repo.RunRow, batch: repo.BatchRow) -> repo.AttemptOutcome:
    refused = _fallback_refused(run.fallback_model, row.refs)
    nxt = policy.decide(
        rec.outcome,
        code=rec.code,
        tries_after=row.tries + 1,
        max_attempts=run.max_attempts,
        model=batch.model,
        fallback_model=None if refused else run.fallback_model,
        fallback_used=row.fallback_used,
    )
    error = None
    if refused and nxt.state == "failed" and rec.reason and not row.fallback_used:
        error = f"{rec.reason}; {refused}"[:1000]
    return repo.AttemptOutcome(
        item_id=rec.item_id,
        outcome=rec.outcome,
        reason=rec.reason,
        usage=rec.usage,
        cost_nanos=rec.cost_nanos,
        standard_nanos=rec.standard_nanos,
        state=ItemState(nxt.state),
        final=nxt.final,
        model=nxt.model or batch.model,
        fallback=nxt.model is not None,
        uri=rec.uri,
        sha256=rec.sha256,
        tried=rec.outcome != "cancelled",
        error=error,
        code=rec.code,
        status=rec.status,
        error_code=ReasonCode.FALLBACK_REFUSED if error is not None else None,
    )


def _fallback_refused(fallback: str | None, refs: str | None) -> str | None:
    """Why the fallback model is not tried for an item with these reference images (it
    accepts fewer than the item has), or None."""
    if not fallback or not refs:
        return None
    count = refs.count(",") + 1
    try:
        limit = load_catalog().get(fallback).max_reference_images
    except KeyError:
        return None
    if count <= limit:
        return None
    return (
        f"fallback_model {fallback} not tried: it accepts at most {limit} reference images, "
        f"this item has {count}"
    )


# ── batches that ended without output ────────────────────────────────────────


def without_output(outcome: policy.Outcome, reason: str, code: ReasonCode) -> Settle:
    """How a batch that ends without output settles (`Ledger.batch_ended`, `cancel_run`):
    every unrecorded attempt gets `outcome` (retry or cancelled) with its reason code, its
    item's next state decided by the policy."""

    def settle(
        run: repo.RunRow, batch: repo.BatchRow, attempts: Sequence[Any]
    ) -> list[repo.AttemptOutcome]:
        rows = {r.key: r for r in attempts}
        records = [empty(r, outcome, reason, code) for r in rows.values()]
        return [_outcome(rec, rows[rec.key], run, batch) for rec in records]

    return settle
