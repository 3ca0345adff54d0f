"""Polling live batches: read their remote state (a few list pages instead of one get per
batch when many are live, per channel) and move each to done (any end with output to
harvest), failed, expired or cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pipeline.adapters.backend import BatchBackend, RemoteBatch
from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.core.errors import ApiError, AuthError, StaleTransition
from pipeline.core.reasons import BATCH_END, ReasonCode
from pipeline.core.states import BatchState, remote_outcome
from pipeline.shell.context import Context
from pipeline.shell.harvest import without_output

log = get_logger()
LIST_WHEN_MORE_THAN = 10


def poll_batches(ctx: Context, runs: dict[str, repo.RunRow]) -> int:
    """Poll every running batch; returns how many changed state."""
    live = [b for b in ctx.ledger.batches_in(["running"]) if b.run_id in runs]
    if not live:
        return 0
    remote: dict[str, RemoteBatch] = {}
    lost: set[str] = set()
    for group in _by_channel(live, runs).values():
        states, gone = _remote_states(ctx, group, ctx.backend_for(runs[group[0].run_id]))
        remote.update(states)
        lost |= gone
    changed = 0
    for batch in live:
        run = runs[batch.run_id]
        found = remote.get(batch.remote_name or "")
        try:
            if found is not None and _apply(ctx, batch, run, found):
                changed += 1
            elif batch.remote_name in lost:
                _end_without_output(ctx, batch, run, "failed", "NOT_FOUND on the service")
                changed += 1
        except StaleTransition:
            # An overlapping tick moved this batch first: its work, not an error.
            log.info("batch_poll_skipped", batch=batch.display_name, reason="moved by another tick")
    return changed


def poll_batch(ctx: Context, batch: repo.BatchRow, run: repo.RunRow) -> bool:
    """Poll one running batch (one a webhook named) with a get; True when it changed state.
    The same guarded moves as `poll_batches`: a tick that moved it first wins."""
    if not batch.remote_name:
        return False
    remote, lost = _remote_states(ctx, [batch], ctx.backend_for(run))
    try:
        if batch.remote_name in remote:
            return _apply(ctx, batch, run, remote[batch.remote_name])
        if batch.remote_name in lost:
            _end_without_output(ctx, batch, run, "failed", "NOT_FOUND on the service")
            return True
    except StaleTransition:
        log.info("batch_poll_skipped", batch=batch.display_name, reason="moved by another tick")
    return False


def _by_channel(
    live: Sequence[repo.BatchRow], runs: dict[str, repo.RunRow]
) -> dict[str | None, list[repo.BatchRow]]:
    """Live batches grouped by their run's channel (each group is one backend)."""
    groups: dict[str | None, list[repo.BatchRow]] = {}
    for batch in live:
        groups.setdefault(runs[batch.run_id].channel, []).append(batch)
    return groups


def _remote_states(
    ctx: Context, live: Sequence[repo.BatchRow], backend: BatchBackend
) -> tuple[dict[str, RemoteBatch], set[str]]:
    """Remote state of each live batch, and the names the service no longer knows (404)."""
    wanted = {b.remote_name for b in live if b.remote_name}
    found: dict[str, RemoteBatch] = {}
    lost: set[str] = set()
    if len(wanted) > LIST_WHEN_MORE_THAN:
        for remote in backend.list_batches(page_size=100):
            if remote.name in wanted:
                found[remote.name] = remote
    for name in wanted - found.keys():
        try:
            found[name] = backend.get_batch(name)
        except AuthError:
            raise
        except ApiError as exc:
            if exc.code == 404:
                lost.add(name)
            log.warning("batch_poll_failed", remote=name, error=str(exc)[:200])
    return found, lost


def _apply(ctx: Context, batch: repo.BatchRow, run: repo.RunRow, remote: RemoteBatch) -> bool:
    outcome = remote_outcome(remote.state)
    now = ctx.now()
    if outcome == "running":
        if remote.state != batch.remote_state:
            ctx.ledger.batch_remote_state(batch.id, remote.state)
        return False
    # Whatever the end, output is harvested: a Vertex job that FAILED, EXPIRED or was
    # CANCELLED keeps the rows it completed (PARTIALLY_SUCCEEDED counts as succeeded).
    if remote.output_file:
        ctx.ledger.batch_done(batch.id, now, remote.state, remote.output_file, remote.end_time)
    else:
        _end_without_output(ctx, batch, run, outcome, remote.state, remote.end_time)
    crashpoint("poll.finished")
    log.info("batch_finished", run=batch.run_id, batch=batch.display_name, state=remote.state)
    return True


def _end_without_output(
    ctx: Context,
    batch: repo.BatchRow,
    run: repo.RunRow,
    outcome: str,
    remote_state: str,
    ended_at: datetime | None = None,
) -> None:
    target = {"failed": BatchState.FAILED, "expired": BatchState.EXPIRED}.get(
        outcome, BatchState.CANCELLED
    )
    if target is BatchState.CANCELLED and run.state == "cancelled":
        settle = without_output("cancelled", "run cancelled", ReasonCode.RUN_CANCELLED)
    else:
        reason = f"batch {outcome} without output ({remote_state})"
        code = BATCH_END.get(outcome, ReasonCode.BATCH_CANCELLED)
        settle = without_output("retry", reason, code)
    ctx.ledger.batch_ended(run, batch, target, ctx.now(), remote_state, settle, ended_at)
