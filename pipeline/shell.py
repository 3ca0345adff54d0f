"""The commands' work, one function each: submit a spec, run it to the end, retry, cancel.
Each takes a Context and returns plain values; rendering is `render`'s job.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pipeline.catalog import Catalog, load_catalog
from pipeline.context import Context
from pipeline.errors import RuntimeFailure
from pipeline.ledger import repo
from pipeline.log import get_logger
from pipeline.planning import load_spec
from pipeline.reporting import held_line
from pipeline.submit import create_run, waiting_reason
from pipeline.tick import cancel_run, run_until_done, settle_cancelled, tick

log = get_logger()


def submit_spec(ctx: Context, spec_path: Path, *, force: bool, use_cache: bool) -> str:
    """Record the run (or find the identical one) and submit what the quota allows."""
    catalog = load_catalog()
    spec = load_spec(spec_path, catalog)
    run_id, created = create_run(ctx, spec, catalog, force=force, use_cache=use_cache)
    if not created:
        log.info("run_exists", run=run_id, hint="use --force for a new run")
        return run_id
    tick(ctx, catalog)
    return run_id


def run_spec(
    ctx: Context,
    spec_path: Path,
    *,
    poll_interval: float,
    force: bool,
    use_cache: bool,
    as_json: bool,
) -> int:
    """submit, tick until finished, print the report; the exit code (0, or 3 if any failed)."""
    from pipeline.render import write_report

    catalog = load_catalog()
    run_id = submit_spec(ctx, spec_path, force=force, use_cache=use_cache)
    progress = _Progress(run_id) if sys.stderr.isatty() else None
    run_until_done(
        ctx,
        catalog,
        run_id,
        poll_interval,
        on_progress=lambda counts: _check_stuck(ctx, run_id, counts, progress),
    )
    if progress is not None:
        progress.close()
    write_report(ctx, run_id, "json" if as_json else "table", None)
    with ctx.engine.connect() as conn:
        counts = repo.item_counts(conn, run_id)
    return 3 if counts.get("failed", 0) + counts.get("failed_final", 0) else 0


def _check_stuck(
    ctx: Context, run_id: str, counts: dict[str, int], progress: _Progress | None
) -> None:
    """Stop `run` when its run is held, or when nothing is live and the queued work can
    never go (a budget)."""
    if progress is not None:
        progress.show(counts)
    with ctx.engine.connect() as conn:
        run = repo.get_run(conn, run_id)
    if run.state == "active" and run.hold_reason is not None:
        raise RuntimeFailure(
            f"run {run_id} is {held_line(ctx, run)}. Its finished results wait in the spool; "
            "once the problem is fixed, `nanobatch tick` (cron) tries it again after the backoff"
        )
    with ctx.engine.connect() as conn:
        if run.state != "active" or repo.batches_in(
            conn, ["submitting", "running", "done"], run_id
        ):
            return
        queued = repo.batches_in(conn, ["queued"], run_id)
    if queued:
        reason = waiting_reason(ctx, queued[0], run)
        if reason and "budget" in reason:
            raise RuntimeFailure(
                f"run {run_id} cannot go on: {reason}. Raise [limits] budget_usd in the spec "
                f"(or NANOBATCH_DAILY_BUDGET_USD), or `nanobatch cancel {run_id}`"
            )


class _Progress:
    """A one-line progress display on stderr for terminals."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.started = time.monotonic()

    def show(self, counts: dict[str, int]) -> None:
        done = counts.get("succeeded", 0)
        failed = counts.get("failed", 0) + counts.get("failed_final", 0)
        total = sum(counts.values())
        width = 30
        filled = int(width * (done + failed) / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        elapsed = time.monotonic() - self.started
        sys.stderr.write(
            f"\r{self.run_id} [{bar}] {done} ok, {failed} failed of {total}  {elapsed:5.0f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def retry_run(ctx: Context, run_ref: str, *, include_final: bool) -> int:
    """Requeue a run's failed (and with include_final, failed for good) items."""
    now = ctx.now()
    with ctx.engine.begin() as conn:
        run = repo.get_run(conn, run_ref)
        n = repo.requeue_items(conn, run.id, include_final=include_final, now=now)
        if n and run.state != "active":
            repo.set_run_state(conn, run.id, run.state, "active", now)
    log.info("run_retry", run=run.id, requeued=n)
    return n


def cancel_and_settle(ctx: Context, run_ref: str, catalog: Catalog) -> None:
    """Cancel a run, then poll and harvest its batches for a short while."""
    with ctx.engine.connect() as conn:
        run_id = repo.get_run(conn, run_ref).id
    cancel_run(ctx, run_id)
    for _ in range(3):
        settle_cancelled(ctx, catalog, run_id)
        with ctx.engine.connect() as conn:
            if not repo.batches_in(conn, ["running", "done"], run_id):
                return
        time.sleep(1.0)
