"""The `Ledger`'s batch steps: reading batches, leases, and the moves a poll or a cancel
makes (running -> done, running -> failed/expired/cancelled, queued -> cancelled), each a
guarded `transition_batch` plus its event row in one transaction. A batch that ends
without output settles its unrecorded attempts in the same transaction: the caller says
how (`Settle`, the policy's decision per attempt), the ledger records it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pipeline.adapters.ledger import batches, items, leases, outcomes, runs
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.outcomes import AttemptOutcome
from pipeline.adapters.ledger.rows import BatchRow, RunRow
from pipeline.core.states import BatchState

Settle = Callable[[RunRow, BatchRow, Sequence[Any]], Sequence[AttemptOutcome]]
"""(run, batch, its unrecorded attempts) -> their outcomes: how a batch that ends without
output settles its items (the shell's policy decides; the ledger records)."""


@dataclass(frozen=True)
class Cancelled:
    """A cancelled run as the cancel left it, and its batches still running remotely."""

    run: RunRow
    live: tuple[BatchRow, ...]


class BatchSteps(LedgerBase):
    def get_batch(self, batch_id: int) -> BatchRow:
        with self._read() as conn:
            return batches.get_batch(conn, batch_id)

    def batch_by_remote_name(self, remote_name: str) -> BatchRow | None:
        with self._read() as conn:
            return batches.batch_by_remote_name(conn, remote_name)

    def batches_in(self, states: Sequence[str], run_id: str | None = None) -> list[BatchRow]:
        """Batches in any of `states` (of one run, or of every run)."""
        with self._read() as conn:
            return batches.batches_in(conn, list(states), run_id)

    def batch_states_by_display(self, names: Sequence[str]) -> dict[str, str]:
        """display name -> state, for the names the ledger knows."""
        with self._read() as conn:
            return batches.batch_states_by_display(conn, names)

    # ── leases (each its own transaction, in `leases`) ──────────────────────────────────

    def acquire_lease(self, name: str, owner: str, now: datetime, ttl: float) -> bool:
        """Take (or renew) a named lease; False when another owner holds it unexpired."""
        return leases.acquire_lease(self._engine, name, owner, now, ttl)

    def release_lease(self, name: str, owner: str) -> None:
        leases.release_lease(self._engine, name, owner)

    def claim_batch(self, batch_id: int, owner: str, now: datetime, ttl: float) -> bool:
        return leases.claim_batch(self._engine, batch_id, owner, now, ttl)

    def release_batch(self, batch_id: int, owner: str) -> None:
        leases.release_batch(self._engine, batch_id, owner)

    # ── moves ─────────────────────────────────────────────────────────────────────────────

    def batch_remote_state(self, batch_id: int, remote_state: str) -> None:
        """A live batch's remote state changed but it is still running: no move, no event."""
        with self._write() as conn:
            batches.update_batch(conn, batch_id, remote_state=remote_state)

    def batch_done(
        self,
        batch_id: int,
        now: datetime,
        remote_state: str,
        output_file: str,
        ended_at: datetime | None,
    ) -> None:
        """running -> done: the service finished it with output to harvest. Raises
        StaleTransition when another process moved it first."""
        with self._write() as conn:
            batches.transition_batch(
                conn,
                batch_id,
                BatchState.RUNNING,
                BatchState.DONE,
                now,
                remote_state,
                remote_state=remote_state,
                output_file=output_file,
                finished_at=now,
                ended_at=ended_at,
            )

    def batch_ended(
        self,
        run: RunRow,
        batch: BatchRow,
        to: BatchState,
        now: datetime,
        remote_state: str,
        settle: Settle,
        ended_at: datetime | None = None,
    ) -> None:
        """running -> failed, expired or cancelled with no output, and its unrecorded
        attempts settled by `settle`, in one transaction. Raises StaleTransition when another
        process moved it first (nothing is settled then)."""
        with self._write() as conn:
            batches.transition_batch(
                conn,
                batch.id,
                BatchState.RUNNING,
                to,
                now,
                remote_state,
                remote_state=remote_state,
                finished_at=now,
                ended_at=ended_at,
            )
            _settle(conn, run, batch, settle, now)

    def cancel_run(self, run_id: str, now: datetime, settle: Settle) -> Cancelled:
        """active -> cancelled, its queued batches cancelled and settled by `settle`, its open
        items cancelled: one transaction. Returns the run and its running batches (the caller
        asks the service to cancel those)."""
        with self._write() as conn:
            run = runs.get_run(conn, run_id)
            if run.state == "active":
                runs.set_run_state(conn, run.id, "active", "cancelled", now)
            run = runs.get_run(conn, run_id)
            for batch in batches.batches_in(conn, ["queued"], run.id):
                batches.transition_batch(
                    conn, batch.id, BatchState.QUEUED, BatchState.CANCELLED, now, "run cancelled"
                )
                _settle(conn, run, batch, settle, now)
            items.cancel_open_items(conn, run.id, now)
            live = batches.batches_in(conn, ["running"], run.id)
        return Cancelled(run, tuple(live))


def _settle(conn: Connection, run: RunRow, batch: BatchRow, settle: Settle, now: datetime) -> None:
    """Record `settle`'s outcomes for the batch's items still in it (no attempt yet)."""
    rows = items.open_batch_items(conn, batch.id)
    recorded = settle(run, batch, rows)
    outcomes.record_outcomes(conn, run.id, batch.id, recorded, now, model=batch.model)
