"""The `Ledger`'s submit steps: forming queued items into batches (names taken fail first),
what limits a create (live batches, enqueued tokens, spend), and the moves of a batch's
create, each one transaction as the kill drills expect:

- `batch_intent` (queued -> submitting, its create counted) is committed before the create
  call, so a create whose answer is lost is reconciled by display name, never made twice;
- `batch_submitted` (submitting -> running) after it; `batch_backoff` and
  `batch_input_gone` when the create is to be tried again; `batch_refused` (submitting ->
  failed, its items failed for good with a `not_sent` attempt) when it never will be.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.adapters.ledger import batches, items, leases, outcomes, references
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.rows import BatchRow, RunRow
from pipeline.core.states import BatchState

OpenKeys = Callable[[Sequence[str], Sequence[str]], dict[str, str]]
"""(run ids, keys) -> key -> the run among them with an open item for it, read in the
caller's transaction (what `TakenNames.check` asks of the ledger)."""

TakenCheck = Callable[[OpenKeys], dict[int, str]]
"""Given the ledger's `OpenKeys`, position in the caller's keys -> why that name is taken."""


@dataclass(frozen=True)
class LiveLoad:
    """What is live on the service now: batches counted against the live-batch limit, and
    enqueued tokens of one model (0 for Vertex, which has no such quota, and when the
    limit is reached)."""

    batches: int
    tokens: int


class SubmitSteps(LedgerBase):
    # ── forming batches ──────────────────────────────────────────────────────────────────

    def queued_items(self, run_id: str, after_id: int, limit: int) -> list[Any]:
        """A page of the run's queued items (ids above `after_id`), in id order."""
        with self._read() as conn:
            return items.queued_items(conn, run_id, after_id, limit)

    def fail_taken(
        self, run_id: str, keys: Sequence[str], check: TakenCheck, from_: str, now: datetime
    ) -> dict[int, str]:
        """Items of the run (by key, in state `from_`) whose name `check` finds taken fail
        for good, in one transaction with the check's read of other runs' claims. Returns
        position in `keys` -> reason, for the names taken."""
        with self._write() as conn:
            reasons = check(lambda run_ids, rest: items.open_keys(conn, run_ids, rest))
            if reasons:
                failures = [(keys[i], reason) for i, reason in sorted(reasons.items())]
                items.fail_items_for_good(conn, run_id, failures, from_, now)
        return reasons

    def create_batch(
        self,
        run: RunRow,
        model: str,
        queued: Sequence[Any],
        est_tokens: int,
        est_nanos: int,
        now: datetime,
    ) -> int:
        """A queued batch of these consecutive queued items (queued -> in_batch, guarded);
        StaleTransition when another tick took some of them first (nothing is written)."""
        with self._write() as conn:
            return batches.create_batch(conn, run, model, queued, est_tokens, est_nanos, now)

    # ── what limits a create ─────────────────────────────────────────────────────────────

    def live_load(self, model: str, *, vertex: bool, limit: int) -> LiveLoad:
        """Live batches (of the channel's kind) and the model's enqueued tokens, one read;
        the tokens are not read (0) once `limit` batches are live: nothing more goes then."""
        with self._read() as conn:
            count = batches.live_batch_count(conn, vertex)
            skip = vertex or count >= limit
            tokens = 0 if skip else batches.live_tokens(conn, model)
        return LiveLoad(count, tokens)

    def spend_of_run(self, run_id: str) -> tuple[int, int]:
        """(spent, reserved) nanos of a run."""
        with self._read() as conn:
            return batches.run_spend(conn, run_id)

    def day_spend(self, day_start: datetime) -> tuple[int, int]:
        """(spent, reserved) nanos of every run since `day_start`."""
        with self._read() as conn:
            return batches.day_spend(conn, day_start)

    # ── a batch's create ─────────────────────────────────────────────────────────────────

    @contextmanager
    def holding_batch(
        self, batch_id: int, owner: str, now: datetime, ttl: float, states: Sequence[str]
    ) -> Iterator[BatchRow | None]:
        """The batch as it is once `owner` holds its claim, or None when another holds it or
        it left `states` meanwhile; the claim is released when the block ends."""
        with leases.holding_batch(self._engine, batch_id, owner, now, ttl, states) as held:
            yield held

    def run_has_references(self, run_id: str) -> bool:
        with self._read() as conn:
            return references.run_has_references(conn, run_id)

    def batch_request_rows(
        self, batch_id: int
    ) -> Generator[tuple[str, str, str, str, int | None, str | None], None, None]:
        """(key, prompt, aspect_ratio, image_size, seed, refs) of the batch's items still in
        it, streamed (the connection is held until the caller stops iterating)."""
        with self._read() as conn:
            yield from items.batch_request_rows(conn, batch_id)

    def keep_or_cancel(self, batch: BatchRow, now: datetime, reason: str) -> bool:
        """True when the batch still has an item to send; else it is cancelled (guarded, from
        the state it was read in) and False."""
        with self._write() as conn:
            if any(True for _ in items.batch_request_rows(conn, batch.id, chunk=1)):
                return True
            batches.transition_batch(
                conn, batch.id, BatchState(batch.state), BatchState.CANCELLED, now, reason
            )
        return False

    def batch_uploaded(self, batch_id: int, file_name: str, now: datetime) -> None:
        """The batch's request file is on the service under `file_name`."""
        with self._write() as conn:
            batches.update_batch(conn, batch_id, file_name=file_name, file_uploaded_at=now)

    def batch_intent(self, batch: BatchRow, now: datetime) -> None:
        """queued -> submitting, its create counted: committed before the create call.
        StaleTransition when another process moved it first."""
        with self._write() as conn:
            batches.transition_batch(
                conn,
                batch.id,
                BatchState.QUEUED,
                BatchState.SUBMITTING,
                now,
                "create intent",
                create_tries=batch.create_tries + 1,
            )

    def batch_submitted(
        self, batch_id: int, remote_name: str, remote_state: str, now: datetime, how: str
    ) -> None:
        """submitting -> running: the service has it (created, or found by display name)."""
        with self._write() as conn:
            batches.transition_batch(
                conn,
                batch_id,
                BatchState.SUBMITTING,
                BatchState.RUNNING,
                now,
                how,
                remote_name=remote_name,
                remote_state=remote_state,
                submitted_at=now,
                not_before=None,
                last_error=None,
            )

    def batch_backoff(self, batch_id: int, not_before: datetime, error: str) -> None:
        """A create failed for now: not tried again before `not_before`."""
        with self._write() as conn:
            batches.update_batch(conn, batch_id, not_before=not_before, last_error=error[:500])

    def batch_input_gone(self, batch_id: int, error: str) -> None:
        """The create found its input file missing or expired: it is uploaded again."""
        with self._write() as conn:
            batches.update_batch(conn, batch_id, file_name=None, last_error=error[:500])

    def batch_refused(self, batch: BatchRow, now: datetime, error: str, reason: str) -> None:
        """submitting -> failed (the service refused the create for good), and its items
        failed for good with a `not_sent` attempt, no try counted: one transaction."""
        with self._write() as conn:
            batches.transition_batch(
                conn,
                batch.id,
                BatchState.SUBMITTING,
                BatchState.FAILED,
                now,
                f"create refused: {error}"[:500],
                last_error=error[:500],
            )
            outcomes.refuse_batch_items(conn, batch.run_id, batch.id, batch.model, reason, now)
