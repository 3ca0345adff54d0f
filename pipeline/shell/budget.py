"""Whether a queued batch may be created now, and if not why: the service's live-batch
limit, the enqueued-token quota, a create backing off, the run's budget and the daily cap
(spent plus reserved nano-dollars, read through `SpendBook` at most once per pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

from pipeline.adapters.ledger import repo
from pipeline.core.reasons import WaitCode, Waiting
from pipeline.core.values import NANOS_PER_USD, as_utc, day_start, usd_to_nanos
from pipeline.shell.context import Context

LIVE_BATCH_LIMIT = 100


class SpendBook:
    """Spent + reserved nano-dollars per run and for the day, for one submission pass.

    Summing recorded costs reads every attempt of a run's finished batches (or of the day),
    so a pass over a hundred queued batches of a million-item run must not do it per batch.
    Each sum is read at most once per REFRESH_S and moved by the reservations this pass makes
    itself: the scheduler lease keeps other ticks from creating batches meanwhile, and their
    harvests only turn reservations into recorded costs."""

    REFRESH_S = 10.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sums: dict[str, tuple[datetime, int, int]] = {}

    def run(self, run_id: str) -> tuple[int, int]:
        return self._read(f"run:{run_id}", lambda: self.ctx.ledger.spend_of_run(run_id))

    def day(self, day_start: datetime) -> tuple[int, int]:
        return self._read(f"day:{day_start:%Y-%m-%d}", lambda: self.ctx.ledger.day_spend(day_start))

    def reserved(self, run_id: str, nanos: int) -> None:
        """This pass created a batch estimated at `nanos`: count it until the next read."""
        for name in (f"run:{run_id}", *(n for n in self._sums if n.startswith("day:"))):
            if name in self._sums:
                at, spent, held = self._sums[name]
                self._sums[name] = (at, spent, held + nanos)

    def _read(self, name: str, read: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        now = self.ctx.now()
        found = self._sums.get(name)
        if found is None or (now - found[0]).total_seconds() > self.REFRESH_S:
            spent, held = read()
            found = self._sums[name] = (now, spent, held)
        return found[1], found[2]


def waiting_reason(
    ctx: Context, batch: repo.BatchRow, run: repo.RunRow, spend: SpendBook | None = None
) -> Waiting | None:
    """Why a queued batch cannot be created now (its code and the line `status` shows), or
    None when it can."""
    now = ctx.now()
    if batch.not_before is not None and as_utc(batch.not_before) > now:
        until = as_utc(batch.not_before)
        return Waiting(
            WaitCode.BACKOFF,
            f"batch create backing off until {until:%H:%M:%S} UTC ({batch.last_error})",
        )
    limit = ctx.settings.max_live_batches or LIVE_BATCH_LIMIT
    # Vertex AI batch prediction has no enqueued-token quota (its load counts no tokens).
    load = ctx.ledger.live_load(batch.model, vertex=run.channel is not None, limit=limit)
    if load.batches >= limit:
        return Waiting(WaitCode.LIVE_LIMIT, f"{limit} batches are live (the service's limit)")
    used = load.tokens
    if used and used + batch.est_tokens > run.max_enqueued_tokens:
        return Waiting(
            WaitCode.QUOTA,
            f"enqueued-token quota: {used:,} of {run.max_enqueued_tokens:,} tokens of "
            f"{batch.model} in live batches",
        )
    return _budget_reason(ctx, batch, run, spend or SpendBook(ctx))


def _budget_reason(
    ctx: Context, batch: repo.BatchRow, run: repo.RunRow, spend: SpendBook
) -> Waiting | None:
    now = ctx.now()
    if run.budget_nanos is not None:
        spent, reserved = spend.run(run.id)
        needed = spent + reserved + batch.est_nanos
        if needed > run.budget_nanos:
            # Raised for this run in the ledger: a new budget_usd in the spec is a new run.
            at_least = math.ceil(needed / (NANOS_PER_USD // 100)) / 100
            return Waiting(
                WaitCode.RUN_BUDGET,
                f"run budget: spent ${_usd(spent)}, reserved ${_usd(reserved)}, "
                f"next batch ~${_usd(batch.est_nanos)}, cap ${_usd(run.budget_nanos)}; "
                f"raise it with `nanobatch budget {run.id} --usd X` "
                f"(X >= {at_least:.2f} lets the next batch go)",
            )
    cap = ctx.settings.daily_budget_usd
    if cap is not None:
        spent, reserved = spend.day(day_start(now))
        cap_nanos = usd_to_nanos(cap)
        if spent + reserved + batch.est_nanos > cap_nanos:
            return Waiting(
                WaitCode.DAILY_BUDGET,
                f"daily budget: spent ${spent / NANOS_PER_USD:.4f} today, reserved "
                f"${reserved / NANOS_PER_USD:.4f}, cap ${cap} (NANOBATCH_DAILY_BUDGET_USD; "
                "work goes on after midnight UTC or under a higher cap)",
            )
    return None


def _usd(nanos: int) -> str:
    return f"{nanos / NANOS_PER_USD:.4f}"
