"""The `Ledger`'s run steps: reading runs, retrying, re-budgeting, finishing, holding and
notifying them. Each method is one connection (reads) or one transaction (writes) around
the topic functions in `runs`, `items`, `batches` and `queries`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pipeline.adapters.ledger import batches, items, queries, runs
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.rows import BatchRow, RunRow
from pipeline.core.errors import UsageError
from pipeline.core.states import RESERVING_BATCH_STATES

"""A batch in one of these still has output coming (or waiting to be harvested)."""


@dataclass(frozen=True)
class RunCounts:
    """A run and its items by state, read together."""

    run: RunRow
    counts: dict[str, int]


@dataclass(frozen=True)
class Requeued:
    """What `retry` did: the run's id and how many items went back to the queue."""

    run_id: str
    count: int


@dataclass(frozen=True)
class BudgetSet:
    """What `set_budget` did: the run, its old cap, and what it has spent and reserved."""

    run_id: str
    old_nanos: int | None
    spent_nanos: int
    reserved_nanos: int


@dataclass(frozen=True)
class RunSpend:
    """A run, what it has spent, and its batches (the progress line's numbers)."""

    run: RunRow
    spent_nanos: int
    batches: tuple[BatchRow, ...]


@dataclass(frozen=True)
class CacheTotals:
    """What the prompt cache saved a run, and how many of its items it served."""

    saved_nanos: int
    served: int


class RunSteps(LedgerBase):
    def get_run(self, ref: str) -> RunRow:
        """The run `ref` names (an id or a unique prefix); UsageError when none does."""
        with self._read() as conn:
            return runs.get_run(conn, ref)

    def list_runs(self, *, active_only: bool = False) -> list[RunRow]:
        with self._read() as conn:
            return runs.list_runs(conn, active_only=active_only)

    def run_outputs(self) -> list[tuple[str, str]]:
        """(run id, output uri) of every run, oldest first."""
        with self._read() as conn:
            return runs.run_outputs(conn)

    def active_runs(self) -> dict[str, RunRow]:
        """Active runs, plus cancelled runs whose batches still have output coming."""
        with self._read() as conn:
            found = {r.id: r for r in runs.list_runs(conn, active_only=True)}
            for batch in batches.batches_in(conn, list(RESERVING_BATCH_STATES)):
                if batch.run_id not in found:
                    found[batch.run_id] = runs.get_run(conn, batch.run_id)
        return found

    def item_counts(self, run_id: str) -> dict[str, int]:
        with self._read() as conn:
            return items.item_counts(conn, run_id)

    def run_counts(self, run_id: str) -> RunCounts:
        """The run and its item counts in one snapshot."""
        with self._read() as conn:
            return RunCounts(runs.get_run(conn, run_id), items.item_counts(conn, run_id))

    def queued_work(self, run_id: str) -> int:
        """How many of an active run's batches wait to be sent (1 for items not yet in one);
        0 for a run that is not active."""
        with self._read() as conn:
            if runs.get_run(conn, run_id).state != "active":
                return 0
            waiting = batches.batches_in(conn, ["queued", "submitting"], run_id)
            return len(waiting) or len(items.queued_items(conn, run_id, 0, 1))

    def run_spend(self, run_ref: str) -> RunSpend:
        """The run, its spend and its batches in one snapshot."""
        with self._read() as conn:
            run = runs.get_run(conn, run_ref)
            spent, _ = batches.run_spend(conn, run.id)
            return RunSpend(run, spent, tuple(batches.batches_of_run(conn, run.id)))

    def retry(self, run_ref: str, *, include_final: bool, now: datetime) -> Requeued:
        """Requeue a run's failed (with include_final, also failed for good) items; a run
        that had ended becomes active again when any went back."""
        with self._write() as conn:
            run = runs.get_run(conn, run_ref)
            n = items.requeue_items(conn, run.id, include_final=include_final, now=now)
            if n and run.state != "active":
                runs.set_run_state(conn, run.id, run.state, "active", now)
        return Requeued(run.id, n)

    def set_budget(self, run_ref: str, nanos: int, now: datetime) -> BudgetSet:
        """A new budget cap for a run (UsageError for a cancelled run), with its event."""
        with self._write() as conn:
            run = runs.get_run(conn, run_ref)
            if run.state == "cancelled":
                raise UsageError(f"run {run.id} is cancelled: nothing more is spent under it")
            old = runs.set_run_budget(conn, run.id, nanos, now)
            spent, reserved = batches.run_spend(conn, run.id)
        return BudgetSet(run.id, old, spent, reserved)

    def finish_run(self, run_id: str, now: datetime) -> bool:
        """active -> finished when no item is open and no batch is unfinished; False when
        work remains or another process moved the run first."""
        with self._write() as conn:
            if items.has_open_items(conn, run_id):
                return False
            if batches.batches_in(conn, ["queued", *RESERVING_BATCH_STATES], run_id):
                return False
            return runs.set_run_state(conn, run_id, "active", "finished", now)

    def hold_run(
        self,
        run_id: str,
        reason: str,
        detail: str,
        now: datetime,
        delay_s: Callable[[int], float],
    ) -> datetime | None:
        """Hold an active run (or hold it again); the next try's time, None when it is no
        longer active or another process recorded this try first."""
        with self._write() as conn:
            return runs.hold_run(conn, run_id, reason, detail, now, delay_s)

    def release_hold(self, run_id: str, now: datetime) -> bool:
        """Clear an active run's hold; False when it was not held."""
        with self._write() as conn:
            return runs.release_hold(conn, run_id, now)

    def runs_to_notify(self) -> list[RunRow]:
        with self._read() as conn:
            return queries.runs_to_notify(conn)

    def mark_notified(self, run_id: str, now: datetime) -> bool:
        """Claim a finished run's notification; False when another process sent it."""
        with self._write() as conn:
            return runs.mark_run_notified(conn, run_id, now)

    def cache_totals(self, run_id: str) -> CacheTotals:
        with self._read() as conn:
            return CacheTotals(
                queries.cache_savings(conn, run_id), queries.cached_count(conn, run_id)
            )

    def run_and_savings(self, run_ref: str) -> tuple[RunRow, int]:
        """The run `run_ref` names and what the prompt cache saved it."""
        with self._read() as conn:
            run = runs.get_run(conn, run_ref)
            return run, queries.cache_savings(conn, run.id)

    def open_keys(self, run_ids: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
        """key -> the run among `run_ids` with an open item for it."""
        with self._read() as conn:
            return items.open_keys(conn, run_ids, keys)
