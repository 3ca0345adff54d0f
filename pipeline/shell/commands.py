"""The commands' work, one function each: submit a spec, run it to the end, retry, cancel.
Each takes a Context and returns plain values; rendering is `render`'s job.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pipeline.adapters.log import get_logger
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import ApiError, Interrupted, PipelineError, RuntimeFailure, UsageError
from pipeline.core.report import held_line
from pipeline.core.states import RESERVING_BATCH_STATES
from pipeline.core.values import usd_to_nanos
from pipeline.shell.budget import waiting_reason
from pipeline.shell.context import Context
from pipeline.shell.intake import create_run, latest_active_run
from pipeline.shell.planning import load_spec
from pipeline.shell.progress import RunProgress
from pipeline.shell.tick import cancel_run, run_until_done, settle_cancelled, sweep_spool, tick

log = get_logger()


def submit_spec(ctx: Context, spec_path: Path, *, force: bool, use_cache: bool) -> str:
    """Record the run (or find the identical one) and submit what the quota allows.

    An identical run that still has queued work (its submit was stopped before sending it)
    is sent now rather than left waiting: submitting again is how a user retries a submit."""
    catalog = load_catalog()
    spec = load_spec(spec_path, catalog, ctx.settings.channel_defaults)
    run_id, created = create_run(ctx, spec, catalog, force=force, use_cache=use_cache)
    if not created:
        queued = _queued_work(ctx, run_id)
        log.info("run_exists", run=run_id, queued=queued, hint="use --force for a new run")
        if not queued:
            return run_id
    try:
        tick(ctx, catalog)
    except PipelineError as exc:
        raise _recorded(exc, run_id, spec_path) from None
    return run_id


def _queued_work(ctx: Context, run_id: str) -> int:
    """How many of an active run's batches wait to be sent (1 for items not yet in one)."""
    return ctx.ledger.queued_work(run_id)


def _recorded(exc: PipelineError, run_id: str, spec_path: Path) -> PipelineError:
    """`exc` (same type and exit code) saying that the run is recorded and how it goes on."""
    message = (
        f"{exc}. Run {run_id} is recorded; its queued work is sent by the next "
        f"`nanobatch tick` or `nanobatch submit {spec_path}`"
    )
    if isinstance(exc, ApiError):
        return type(exc)(message, code=exc.code)
    return type(exc)(message)


def run_spec(
    ctx: Context,
    spec_path: Path,
    *,
    poll_interval: float,
    force: bool,
    use_cache: bool,
    as_json: bool,
) -> int:
    """Resume the spec's latest active run (or submit it), tick until finished, print the
    report; the exit code (0, or 3 if any failed). Ctrl-C raises Interrupted, which says how
    to resume."""
    from pipeline.shell.reporting import write_report

    catalog = load_catalog()
    spec = load_spec(spec_path, catalog, ctx.settings.channel_defaults)
    run_id: str | None = None
    progress: RunProgress | None = None
    try:
        # An interrupted run (even one started with --force) goes on before an older,
        # finished run of the same spec is reported again.
        run_id = None if force else latest_active_run(ctx, spec)
        if run_id is None:
            run_id, created = create_run(ctx, spec, catalog, force=force, use_cache=use_cache)
            if created:
                tick(ctx, catalog)
        else:
            log.info("run_resumed", run=run_id)
        progress = RunProgress(ctx, run_id) if sys.stderr.isatty() else None
        run_until_done(
            ctx,
            catalog,
            run_id,
            poll_interval,
            on_progress=lambda counts: _check_stuck(ctx, run_id, counts, progress),
        )
    except KeyboardInterrupt:
        if progress is not None:
            progress.close()
        raise Interrupted(_resume_hint(spec_path, run_id)) from None
    if progress is not None:
        progress.close()
    write_report(ctx, run_id, "json" if as_json else "table", None)
    counts = ctx.ledger.item_counts(run_id)
    return 3 if counts.get("failed", 0) + counts.get("failed_final", 0) else 0


def _resume_hint(spec_path: Path, run_id: str | None) -> str:
    """What to do after Ctrl-C: the run is recorded (or not) and goes on when resumed."""
    again = f"nanobatch run {shlex.quote(str(spec_path))}"
    if run_id is None:
        return (
            f"interrupted while recording the run; run `{again}` again: it resumes the run "
            "if it was recorded (`nanobatch status` lists the runs)"
        )
    return (
        f"interrupted; run `{again}` again or `nanobatch tick` to resume run {run_id} "
        f"(`nanobatch cancel {run_id}` to stop it)"
    )


def _check_stuck(
    ctx: Context, run_id: str, counts: dict[str, int], progress: RunProgress | None
) -> None:
    """Stop `run` when its run is held, or when nothing is live and the queued work can
    never go (a budget)."""
    if progress is not None:
        progress.show(counts)
    run = ctx.ledger.get_run(run_id)
    if run.state == "active" and run.hold_reason is not None:
        raise RuntimeFailure(
            f"run {run_id} is {held_line(run, ctx.now())}. Its finished results wait in the spool; "
            "once the problem is fixed, `nanobatch tick` (cron) tries it again after the backoff"
        )
    if run.state != "active" or ctx.ledger.batches_in(RESERVING_BATCH_STATES, run_id):
        return
    queued = ctx.ledger.batches_in(["queued"], run_id)
    if queued:
        waiting = waiting_reason(ctx, queued[0], run)
        if waiting is not None and waiting.budget:
            # The reason says how to raise the cap; the run stays active and goes on after.
            again = f"nanobatch run {shlex.quote(run.spec_path)}"
            raise RuntimeFailure(
                f"run {run_id} cannot go on: {waiting.text}. Then `{again}` again (or `nanobatch "
                f"tick`) goes on with this run; or `nanobatch cancel {run_id}`"
            )


def retry_run(ctx: Context, run_ref: str, *, include_final: bool) -> int:
    """Requeue a run's failed (and with include_final, failed for good) items."""
    done = ctx.ledger.retry(run_ref, include_final=include_final, now=ctx.now())
    log.info("run_retry", run=done.run_id, requeued=done.count)
    return done.count


@dataclass(frozen=True)
class BudgetChange:
    run_id: str
    old_nanos: int | None
    new_nanos: int
    spent_nanos: int
    reserved_nanos: int


def set_budget(ctx: Context, run_ref: str, usd: str) -> BudgetChange:
    """`nanobatch budget RUN --usd X`: a new cap for this run, kept in the ledger (the spec's
    budget_usd is only its first value: changing the spec would make a new run). The next
    tick's budget checks use it."""
    nanos = _budget_nanos(usd)
    done = ctx.ledger.set_budget(run_ref, nanos, ctx.now())
    log.info("run_budget_set", run=done.run_id, old_nanos=done.old_nanos, new_nanos=nanos)
    return BudgetChange(done.run_id, done.old_nanos, nanos, done.spent_nanos, done.reserved_nanos)


def _budget_nanos(usd: str) -> int:
    try:
        value = Decimal(usd.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0:
        raise UsageError(f"--usd {usd!r}: a budget is a number of US dollars above 0, e.g. 50")
    return usd_to_nanos(value)


def cancel_and_settle(ctx: Context, run_ref: str, catalog: Catalog) -> None:
    """Cancel a run, then poll and harvest its batches for a short while."""
    run_id = ctx.ledger.get_run(run_ref).id
    cancel_run(ctx, run_id)
    sweep_spool(ctx)  # the request files of its batches that will never be sent
    for _ in range(3):
        settle_cancelled(ctx, catalog, run_id)
        if not ctx.ledger.batches_in(["running", "done"], run_id):
            return
        time.sleep(1.0)
