"""One cron-safe step over every active run (finish started work before starting new):
harvest finished batches, poll live ones, form batches from queued items, create what the
quota and budgets allow, and close runs with nothing left to do. Also `run`'s loop,
`cancel` and `retry`.

Overlapping ticks are safe: each batch is claimed with a lease before it is harvested or
submitted, and creating batches happens under one scheduler lease, so two ticks never
create the same batch or harvest the same result; a dead holder delays others by at most
the lease's TTL (60 s).

Runs are isolated (`holds`): each run's harvest, cache, forming and creating is one unit,
and a run whose own storage, input or batch files fail is held while the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.adapters import shardfile
from pipeline.adapters import spool as spool_files
from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.core.catalog import Catalog
from pipeline.core.errors import StorageError, TransientApiError
from pipeline.core.reasons import ReasonCode
from pipeline.core.states import TERMINAL_BATCH_STATES, BatchState
from pipeline.shell.cache import serve_from_cache
from pipeline.shell.context import Context
from pipeline.shell.harvest import harvest_batch, spool_batch, without_output
from pipeline.shell.holds import Isolation, detail_of
from pipeline.shell.notify import notify_finished
from pipeline.shell.poll import poll_batch, poll_batches
from pipeline.shell.reporting import write_run_manifest
from pipeline.shell.submit import Submitter, form_batches

log = get_logger()
SCHEDULER_LEASE = "scheduler"
LEASE_TTL_S = 60.0
TERMINAL_STATES = frozenset(s.value for s in TERMINAL_BATCH_STATES)
ORPHAN_REQUESTS_S = 3600.0
"""A batch request file with no batch in the ledger is left this long: the `submit` that
wrote it may still be recording its run."""


@dataclass
class TickResult:
    harvested: int = 0
    polled: int = 0
    formed: int = 0
    created: int = 0
    finished_runs: list[str] = field(default_factory=list)
    held_runs: dict[str, str] = field(default_factory=dict)
    """Runs held at the end of the step, with their reason codes."""


def tick(ctx: Context, catalog: Catalog) -> TickResult:
    """One step over every active run. Side effects: API calls, stored images, ledger rows.

    Raises only for the step itself (the ledger, the spool disk, the key, a bug), and, after
    every run had its turn, for a throttling or unreachable service."""
    result = TickResult()
    sweep_spool(ctx)
    runs = _active_runs(ctx)
    if not runs:
        return result
    iso = Isolation(ctx)
    for run in runs.values():
        iso.ready(run)  # a held run whose backoff has passed is tried again from the start
    result.harvested = _harvest_done(ctx, runs, catalog, iso)
    result.polled = poll_batches(ctx, runs)
    result.harvested += _harvest_done(ctx, runs, catalog, iso)
    result.formed, result.created = _schedule(ctx, runs, catalog, iso)
    iso.release()
    result.finished_runs = _close_finished(ctx, runs, iso)
    result.held_runs = _held(runs, iso)
    notify_finished(ctx)
    iso.raise_deferred()
    return result


def _schedule(
    ctx: Context, runs: dict[str, repo.RunRow], catalog: Catalog, iso: Isolation
) -> tuple[int, int]:
    """Under the scheduler lease (skipped when another process holds it): serve queued items
    from the prompt cache, form batches and create them, each run in its unit.
    (batches formed, created)"""
    owner = ctx.settings.worker_id
    if not ctx.ledger.acquire_lease(SCHEDULER_LEASE, owner, ctx.now(), LEASE_TTL_S):
        return 0, 0
    formed = 0
    try:
        for run in runs.values():
            if not iso.ready(run):
                continue
            with iso.unit(run):
                serve_from_cache(ctx, run, keepalive=lambda: _renew_scheduler(ctx, owner))
                formed += form_batches(ctx, run, catalog)
        created = Submitter(ctx, iso, keepalive=lambda: _renew_scheduler(ctx, owner)).run(runs)
    finally:
        ctx.ledger.release_lease(SCHEDULER_LEASE, owner)
    return formed, created


def move_batch_on(ctx: Context, catalog: Catalog, remote_name: str) -> str:
    """What `listen` does for the batch a webhook names: the tick's steps for that batch's
    run alone, under the same leases and holds (poll the batch, harvest what is done, form
    and create batches for the items it failed, close the run when it is finished).
    Returns what became of the batch, for the delivery's record."""
    batch = ctx.ledger.batch_by_remote_name(remote_name)
    if batch is None:
        return "unknown batch"
    run = ctx.ledger.get_run(batch.run_id)
    runs = {run.id: run}
    iso = Isolation(ctx)
    iso.ready(run)
    if batch.state == BatchState.RUNNING.value:
        poll_batch(ctx, batch, run)
    _harvest_done(ctx, runs, catalog, iso)
    if run.state == "active":
        _schedule(ctx, runs, catalog, iso)
    iso.release()
    _close_finished(ctx, runs, iso)
    notify_finished(ctx)
    iso.raise_deferred()
    return f"batch {ctx.ledger.get_batch(batch.id).state}"


def _held(runs: dict[str, repo.RunRow], iso: Isolation) -> dict[str, str]:
    held = {run_id: reason.value for run_id, reason in iso.held.items()}
    for run in runs.values():
        if run.state == "active" and run.hold_reason and iso.still_held(run):
            held.setdefault(run.id, run.hold_reason)
    return dict(sorted(held.items()))


def _renew_scheduler(ctx: Context, owner: str) -> bool:
    return ctx.ledger.acquire_lease(SCHEDULER_LEASE, owner, ctx.now(), LEASE_TTL_S)


def sweep_spool(ctx: Context) -> None:
    """Delete spool files nothing will read again: results spools of batches already
    harvested (a process killed after the harvest commit but before its cleanup leaves one
    behind, and they can be large), and batch request files that were uploaded, or whose run
    was never recorded (a killed `submit`) an hour after they were written."""
    spool = ctx.settings.spool_dir
    results = spool_files.results_files(spool)
    requests = {
        p.name.removesuffix(shardfile.SUFFIX): p for p in spool.glob(f"*{shardfile.SUFFIX}")
    }
    if not results and not requests:
        return
    states = ctx.ledger.batch_states_by_display([*results, *requests])
    stale = [p for name, p in results.items() if states.get(name) in TERMINAL_STATES]
    waiting = (BatchState.QUEUED.value, BatchState.SUBMITTING.value)
    for name, path in requests.items():
        state = states.get(name)
        orphan = state is None and _older_than(path, ORPHAN_REQUESTS_S)
        if orphan or (state is not None and state not in waiting):
            stale.append(path)
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("spool_swept", file=path.name)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _active_runs(ctx: Context) -> dict[str, repo.RunRow]:
    """Active runs, plus cancelled runs whose batches still have output coming."""
    return ctx.ledger.active_runs()


def _harvest_done(
    ctx: Context, runs: dict[str, repo.RunRow], catalog: Catalog, iso: Isolation
) -> int:
    """Harvest every `done` batch of these runs, each run in its own unit; a held run's
    batches are only downloaded to the spool. Then each touched run's manifest."""
    done = ctx.ledger.batches_in(["done"])
    harvested = 0
    touched: set[str] = set()
    for batch in done:
        run = runs.get(batch.run_id)
        if run is None:
            continue
        if not iso.ready(run):
            with iso.unit(run):
                _keep_for_later(ctx, batch, run, catalog)
            continue
        with iso.unit(run):
            if _harvest(ctx, batch, run, catalog):
                harvested += 1
                touched.add(run.id)
    # A run tried again after a hold gets its manifest written even with nothing to harvest
    # (the hold may have stopped the write of the last one).
    for run in runs.values():
        again = run.id in iso.retried and run.id not in iso.manifests
        if (run.id in touched or again) and iso.ready(run):
            with iso.unit(run):
                write_run_manifest(ctx, run)
                iso.manifests.add(run.id)
    return harvested


def _harvest(ctx: Context, batch: repo.BatchRow, run: repo.RunRow, catalog: Catalog) -> bool:
    """Harvest a batch; a cancelled run whose storage fails gets its lines recorded without
    storing (it is not held: it has ended)."""
    try:
        return harvest_batch(ctx, batch, run, catalog)
    except StorageError as exc:
        if run.state == "active":
            raise
        reason = f"run cancelled; its image was not stored: {detail_of(exc)}"
        return harvest_batch(ctx, batch, run, catalog, unstored=reason)


def _keep_for_later(ctx: Context, batch: repo.BatchRow, run: repo.RunRow, catalog: Catalog) -> None:
    """A held run's finished batch: its results go to the spool (they expire on the service
    48 h after the batch ends) and wait there; a cancelled held run's are recorded, unstored."""
    if run.state == "active":
        spool_batch(ctx, batch, run)
        return
    reason = f"run cancelled while held; its image was not stored: {run.hold_detail}"
    harvest_batch(ctx, batch, run, catalog, unstored=reason[:500])


def _close_finished(ctx: Context, runs: dict[str, repo.RunRow], iso: Isolation) -> list[str]:
    finished = []
    for run in runs.values():
        if run.state != "active" or iso.still_held(run):
            continue  # a held run finishes once its try goes through (its manifest, say)
        if ctx.ledger.finish_run(run.id, ctx.now()):
            finished.append(run.id)
            log.info("run_finished", run=run.id)
    return finished


def run_until_done(
    ctx: Context,
    catalog: Catalog,
    run_id: str,
    poll_interval: float,
    on_progress: Callable[[dict[str, int]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Tick until the run is finished or cancelled."""
    while True:
        try:
            tick(ctx, catalog)
        except TransientApiError as exc:
            # A blip in a 24-hour window is not the end of the run: the next tick resumes.
            log.warning("tick_transient_error", run=run_id, error=str(exc)[:300])
        seen = ctx.ledger.run_counts(run_id)
        if on_progress is not None:
            on_progress(seen.counts)
        if seen.run.state != "active":
            return
        sleep(poll_interval)


def cancel_run(ctx: Context, run_id: str) -> int:
    """Cancel a run's live batches; queued work is dropped; finished output is harvested by
    the next tick (a held run's is recorded with its cost but not stored: its hold stays
    on the cancelled run, so nothing tries its storage again). Returns how many remote
    batches were asked to cancel."""
    cancelled = ctx.ledger.cancel_run(
        run_id,
        ctx.now(),
        without_output("cancelled", "run cancelled", ReasonCode.RUN_CANCELLED),
    )
    run = cancelled.run
    asked = 0
    for batch in cancelled.live:
        if batch.remote_name:
            ctx.backend_for(run).cancel_batch(batch.remote_name)
            asked += 1
    log.info("run_cancelled", run=run_id, live_batches=asked)
    return asked


def settle_cancelled(ctx: Context, catalog: Catalog, run_id: str) -> None:
    """After `cancel`: poll and harvest the run's batches until none is live."""
    run = ctx.ledger.get_run(run_id)
    runs = {run.id: run}
    poll_batches(ctx, runs)
    iso = Isolation(ctx)
    _harvest_done(ctx, runs, catalog, iso)
    iso.raise_deferred()
