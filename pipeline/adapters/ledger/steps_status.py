"""The `Ledger`'s reads for a run's tables and its `status`: `TableReads` (what the manifest
and rejects files are written from, on one connection: the ledger's own, or at submit the
recording transaction's, whose new rows are not committed yet) and `status_figures` (every
figure of a run's `status` entry in one read, each answered from an index).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pipeline.adapters.ledger import batches, queries, runs, status
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.rows import BatchRow, RunRow
from pipeline.adapters.ledger.steps_reads import RunMetricData, run_metric_data


class TableReads:
    """The reads a run's tables are written from, on one connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def run(self, run_id: str) -> RunRow:
        return runs.get_run(self._conn, run_id)

    def run_outputs(self) -> list[tuple[str, str]]:
        """(run id, output URI) of every run, oldest first."""
        return list(runs.run_outputs(self._conn))

    def report_columns(self, run_id: str, **options: Any) -> Iterator[Any]:
        """The run's item rows in column chunks (`queries.report_columns`)."""
        yield from queries.report_columns(self._conn, run_id, **options)

    def rejects(self, run_id: str) -> Iterator[Any]:
        """(row, key, reason) of the run's rejected input rows, in row order."""
        yield from queries.rejects_of_run(self._conn, run_id)


@dataclass(frozen=True)
class StatusFigures:
    """What a run's `status` entry is made of."""

    counts: dict[str, int]
    """Items by state (`failed_final` apart)."""
    cached: int
    batches: dict[str, int]
    spent_nanos: int
    reserved_nanos: int
    first_queued: BatchRow | None
    """The run's oldest queued batch (what `waiting` explains), if any."""
    day_spend: tuple[int, int] | None
    """(spent, reserved) nanos of every run since the day's start, when asked for."""
    metrics: RunMetricData


class StatusSteps(LedgerBase):
    @contextmanager
    def table_reads(self) -> Iterator[TableReads]:
        """`TableReads` on a connection of its own, closed when the block ends."""
        with self._read() as conn:
            yield TableReads(conn)

    def report_columns(self, run_id: str, **options: Any) -> Iterator[Any]:
        """The run's item rows in column chunks, streamed (the connection is held until
        the caller stops iterating)."""
        with self._read() as conn:
            yield from queries.report_columns(conn, run_id, **options)

    def status_figures(self, run_id: str, day_start: datetime | None) -> StatusFigures:
        """A run's `status` figures in one read; `day_start`: also the day's spend."""
        with self._read() as conn:
            counts, cached = status.status_counts(conn, run_id)
            totals = status.run_attempt_totals(conn, run_id)
            spent, reserved = status.status_spend(conn, run_id, totals)
            queued = batches.batches_in(conn, ["queued"], run_id)
            return StatusFigures(
                counts=counts,
                cached=cached,
                batches=batches.batch_state_counts(conn, run_id),
                spent_nanos=spent,
                reserved_nanos=reserved,
                first_queued=queued[0] if queued else None,
                day_spend=None if day_start is None else batches.day_spend(conn, day_start),
                metrics=run_metric_data(conn, run_id, totals=totals),
            )
