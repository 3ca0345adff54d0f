"""One cron-safe step over every active run (finish started work before starting new):
harvest finished batches, poll live ones, form batches from queued items, create what the
quota and budgets allow, and close runs with nothing left to do. Also `run`'s loop,
`cancel` and `retry`.

Overlapping ticks are safe: each batch is claimed with a lease before it is harvested or
submitted, and creating batches happens under one scheduler lease, so two ticks never
create the same batch or harvest the same result; a dead holder delays others by at most
the lease's TTL (60 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import shardfile
from pipeline.cache import serve_from_cache
from pipeline.catalog import Catalog
from pipeline.context import Context
from pipeline.errors import TransientApiError
from pipeline.harvest import harvest_batch, settle_without_output
from pipeline.ledger import repo
from pipeline.log import get_logger
from pipeline.notify import notify_finished
from pipeline.poll import poll_batches
from pipeline.reporting import write_run_manifest
from pipeline.states import TERMINAL_BATCH_STATES, BatchState
from pipeline.submit import Submitter, form_batches

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


def tick(ctx: Context, catalog: Catalog) -> TickResult:
    """One step over every active run. Side effects: API calls, stored images, ledger rows."""
    result = TickResult()
    sweep_spool(ctx)
    runs = _active_runs(ctx)
    if not runs:
        return result
    result.harvested = _harvest_done(ctx, runs, catalog)
    result.polled = poll_batches(ctx, runs)
    result.harvested += _harvest_done(ctx, runs, catalog)
    owner = ctx.settings.worker_id
    if repo.acquire_lease(ctx.engine, SCHEDULER_LEASE, owner, ctx.now(), LEASE_TTL_S):
        try:
            for run in runs.values():
                serve_from_cache(ctx, run, keepalive=lambda: _renew_scheduler(ctx, owner))
                result.formed += form_batches(ctx, run, catalog)
            result.created = Submitter(ctx).run(runs)
        finally:
            repo.release_lease(ctx.engine, SCHEDULER_LEASE, owner)
    result.finished_runs = _close_finished(ctx, runs)
    notify_finished(ctx)
    return result


def _renew_scheduler(ctx: Context, owner: str) -> bool:
    return repo.acquire_lease(ctx.engine, SCHEDULER_LEASE, owner, ctx.now(), LEASE_TTL_S)


def sweep_spool(ctx: Context) -> None:
    """Delete spool files nothing will read again: results spools of batches already
    harvested (a process killed after the harvest commit but before its cleanup leaves one
    behind, and they can be large), and batch request files that were uploaded, or whose run
    was never recorded (a killed `submit`) an hour after they were written."""
    spool = ctx.settings.spool_dir
    results = {p.name.removesuffix(".results.jsonl"): p for p in spool.glob("*.results.jsonl")}
    requests = {
        p.name.removesuffix(shardfile.SUFFIX): p for p in spool.glob(f"*{shardfile.SUFFIX}")
    }
    if not results and not requests:
        return
    with ctx.engine.connect() as conn:
        states = repo.batch_states_by_display(conn, [*results, *requests])
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
    with ctx.engine.connect() as conn:
        runs = {r.id: r for r in repo.list_runs(conn, active_only=True)}
        for batch in repo.batches_in(conn, ["submitting", "running", "done"]):
            if batch.run_id not in runs:
                runs[batch.run_id] = repo.get_run(conn, batch.run_id)
    return runs


def _harvest_done(ctx: Context, runs: dict[str, repo.RunRow], catalog: Catalog) -> int:
    with ctx.engine.connect() as conn:
        done = repo.batches_in(conn, ["done"])
    harvested = 0
    touched: set[str] = set()
    for batch in done:
        run = runs.get(batch.run_id)
        if run is not None and harvest_batch(ctx, batch, run, catalog):
            harvested += 1
            touched.add(run.id)
    for run_id in touched:
        write_run_manifest(ctx, runs[run_id])
    return harvested


def _close_finished(ctx: Context, runs: dict[str, repo.RunRow]) -> list[str]:
    finished = []
    for run in runs.values():
        if run.state != "active":
            continue
        with ctx.engine.begin() as conn:
            if repo.has_open_items(conn, run.id):
                continue
            if repo.batches_in(conn, ["queued", "submitting", "running", "done"], run.id):
                continue
            if repo.set_run_state(conn, run.id, "active", "finished", ctx.now()):
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
        with ctx.engine.connect() as conn:
            run = repo.get_run(conn, run_id)
            counts = repo.item_counts(conn, run_id)
        if on_progress is not None:
            on_progress(counts)
        if run.state != "active":
            return
        sleep(poll_interval)


def cancel_run(ctx: Context, run_id: str) -> int:
    """Cancel a run's live batches; queued work is dropped; finished output is harvested by
    the next tick. Returns how many remote batches were asked to cancel."""
    now = ctx.now()
    with ctx.engine.begin() as conn:
        run = repo.get_run(conn, run_id)
        if run.state == "active":
            repo.set_run_state(conn, run.id, "active", "cancelled", now)
        run = repo.get_run(conn, run_id)
        for batch in repo.batches_in(conn, ["queued"], run.id):
            repo.transition_batch(
                conn, batch.id, BatchState.QUEUED, BatchState.CANCELLED, now, "run cancelled"
            )
            settle_without_output(ctx, conn, batch, run, "cancelled", "run cancelled")
        repo.cancel_open_items(conn, run.id, now)
        live = repo.batches_in(conn, ["running"], run.id)
    asked = 0
    for batch in live:
        if batch.remote_name:
            ctx.backend_for(run).cancel_batch(batch.remote_name)
            asked += 1
    log.info("run_cancelled", run=run_id, live_batches=asked)
    return asked


def settle_cancelled(ctx: Context, catalog: Catalog, run_id: str) -> None:
    """After `cancel`: poll and harvest the run's batches until none is live."""
    with ctx.engine.connect() as conn:
        run = repo.get_run(conn, run_id)
    runs = {run.id: run}
    poll_batches(ctx, runs)
    _harvest_done(ctx, runs, catalog)
