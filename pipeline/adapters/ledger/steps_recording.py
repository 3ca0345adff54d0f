"""The `Ledger`'s run recording: one transaction around a run's whole streaming expansion
(`Ledger.recording`). It inserts the run row when it opens and yields a `Recording`, the
exact operations intake makes while it streams a million rows (items a slice at a time,
through COPY on PostgreSQL; rejects; batches opened and closed as they are packed; the
counts; the reads its checks and tables need, which see the rows not committed yet). The
whole run is committed when the block ends and rolled back when it raises: a crash
records nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pipeline.adapters.ledger import batches, items, references, runs
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.batches import OpenedBatch
from pipeline.adapters.ledger.db import session_scope
from pipeline.adapters.ledger.rows import RunRow
from pipeline.adapters.ledger.steps_status import TableReads


class Recording:
    """A run being recorded: every write and read intake makes, in the recording
    transaction (valid only inside `Ledger.recording`'s block)."""

    def __init__(self, conn: Connection, run_id: str) -> None:
        self._conn = conn
        self.run_id = run_id
        self.tables = TableReads(conn)
        """The reads the run's tables are written from, seeing its uncommitted rows."""

    # ── reads ────────────────────────────────────────────────────────────────────────────

    def run(self) -> RunRow:
        return runs.get_run(self._conn, self.run_id)

    def any_stored_image(self) -> bool:
        """Whether another run has stored an image (else the prompt cache cannot serve)."""
        return items.any_stored_image(self._conn, self.run_id)

    def cached_hashes(self, hashes: Iterable[str]) -> set[str]:
        """Those of `hashes` (prompt sha256s) whose image another run has stored."""
        return items.cached_hashes(self._conn, hashes, self.run_id)

    def open_keys(self, run_ids: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
        """key -> the run among `run_ids` with an open item for it (`taken`'s claims)."""
        return items.open_keys(self._conn, run_ids, keys)

    # ── writes ───────────────────────────────────────────────────────────────────────────

    def references(self, refs: Iterable[Any]) -> None:
        """The run's reference images (each once)."""
        references.insert_run_references(self._conn, self.run_id, refs)

    def items(
        self, rows: list[tuple[Any, ...]], *, state: str, batch_id: int | None, rich: bool
    ) -> None:
        """New item rows (`runs.ITEM_ROW` order, `RICH_ITEM_ROW` when `rich`), all in one
        state and batch (COPY on PostgreSQL)."""
        runs.insert_items(self._conn, rows, state=state, batch_id=batch_id, rich=rich)

    def fail_for_good(self, reasons: Sequence[tuple[str, str]], from_: str, now: datetime) -> int:
        """Items (by key, in state `from_`) failed for good before anything was sent for
        them (their name is taken); returns how many moved."""
        return items.fail_items_for_good(self._conn, self.run_id, reasons, from_, now)

    def rejects(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rejected input rows (run_id, row, key, reason)."""
        runs.insert_rejects(self._conn, rows)

    def open_batch(self, model: str, now: datetime) -> OpenedBatch:
        """A new batch being filled (its id, sequence number and display name)."""
        return batches.open_batch(self._conn, self.run_id, model, now)

    def close_batch(
        self,
        batch_id: int,
        model: str,
        count: int,
        tokens: int,
        nanos: int,
        now: datetime,
        shard_sha256: str | None,
    ) -> None:
        """The filled batch queued, with its totals (and its written file's sha256)."""
        batches.close_batch(
            self._conn, self.run_id, batch_id, model, count, tokens, nanos, now, shard_sha256
        )

    def counts(self, item_count: int, rejected: int, est_nanos: int) -> None:
        """The run's item and reject counts and its estimate, once all are recorded."""
        runs.update_run_counts(self._conn, self.run_id, item_count, rejected, est_nanos)


class RecordingSteps(LedgerBase):
    def find_run_by_identity(self, identity: str) -> RunRow | None:
        with self._read() as conn:
            return runs.find_run_by_identity(conn, identity)

    def latest_active_run_like(
        self, job: str, spec_json: str, input_sha: str, date: str
    ) -> RunRow | None:
        """The newest active run of this job, spec, input and date."""
        with self._read() as conn:
            return runs.latest_active_run_like(conn, job, spec_json, input_sha, date)

    @contextmanager
    def recording(self, run_values: dict[str, Any]) -> Iterator[Recording]:
        """Insert the run (with its `created` event) and yield its `Recording`: one
        transaction, committed when the block ends, rolled back when it raises."""
        with session_scope(self._engine) as session:
            conn = session.connection()
            runs.insert_run(conn, run_values)
            yield Recording(conn, run_values["id"])
