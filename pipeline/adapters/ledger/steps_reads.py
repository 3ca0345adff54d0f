"""The `Ledger`'s reads for reports and metrics, and the prompt cache's two steps (find
sources for queued items; serve one item, a guarded queued -> succeeded). Streams
(`report_rows`, `failed_items`) hold their connection until the caller stops iterating.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from pipeline.adapters.ledger import batches, deliveries, items, queries, status
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.rows import RunRow


@dataclass(frozen=True)
class CacheChunk:
    """A page of a run's queued items and the stored images of other runs for their
    prompts (prompt sha256 -> sources, best first)."""

    rows: tuple[Any, ...]
    sources: dict[str, list[Any]]


@dataclass(frozen=True)
class RunMetricData:
    """The rows a run's metrics are computed from (`status --json`'s `metrics`)."""

    costs: tuple[Any, ...]
    """(model, images, cost_nanos) per model."""
    attempt_reasons: tuple[Any, ...]
    """(outcome, reason code, reason status, count) of recorded attempts."""
    duplicates: tuple[int, int]
    """(duplicate lines, their cost in nanos)."""
    batch_times: tuple[Any, ...]
    """(state, created_at, submitted_at, finished_at) per batch."""


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every number `nanobatch metrics` exposes, read in one connection."""

    runs: tuple[RunRow, ...]
    items_by_run_state: tuple[Any, ...]
    batch_counts: dict[str, int]
    data: RunMetricData
    """The same rows as a run's metrics, over every run (batch times: the window's)."""
    day_spend: tuple[int, int]
    """(spent, reserved) nanos since the start of the day."""
    webhook_counts: tuple[tuple[str, str, int], ...]
    """(event, state, count) of recorded webhook deliveries."""
    webhook_times: tuple[Any, ...]


def run_metric_data(
    conn: Connection,
    run_id: str | None,
    since: datetime | None = None,
    totals: Sequence[Any] | None = None,
) -> RunMetricData:
    """The metric rows of one run (or of every run, batch times since `since`), on `conn`
    (`metrics_snapshot`, `status_figures`). A run's come from
    its attempt sums (`status.run_attempt_totals`, or `totals` already read), answered from
    an index, so `status` stays fast at a million items."""
    if run_id is not None:
        totals = status.run_attempt_totals(conn, run_id) if totals is None else totals
        return RunMetricData(
            costs=tuple(status.costs_from_totals(totals)),
            attempt_reasons=tuple(status.reasons_from_totals(conn, run_id, totals)),
            duplicates=status.duplicates_from_totals(totals),
            batch_times=tuple(queries.batch_times(conn, run_id, since)),
        )
    return RunMetricData(
        costs=tuple(queries.cost_by_model(conn, run_id)),
        attempt_reasons=tuple(queries.attempt_reasons(conn, run_id)),
        duplicates=queries.duplicate_totals(conn, run_id),
        batch_times=tuple(queries.batch_times(conn, run_id, since)),
    )


class ReadSteps(LedgerBase):
    # ── prompt cache ─────────────────────────────────────────────────────────────────────

    def cache_chunk(self, run_id: str, after_id: int, limit: int) -> CacheChunk:
        """Queued items of the run above `after_id` (up to `limit`) and their cache sources."""
        with self._read() as conn:
            rows = items.queued_items(conn, run_id, after_id, limit)
            hashes = sorted({r.prompt_sha256 for r in rows})
            sources = queries.cache_sources(conn, hashes, exclude_run=run_id) if rows else {}
        return CacheChunk(tuple(rows), sources)

    def serve_cached(
        self,
        run_id: str,
        item_id: int,
        uri: str,
        sha256: str,
        now: datetime,
        detail: str,
        model: str,
    ) -> bool:
        """queued -> succeeded from the prompt cache (no attempt); False when the item was no
        longer queued (another process moved it first)."""
        with self._write() as conn:
            return queries.mark_cached(conn, run_id, item_id, uri, sha256, now, detail, model)

    # ── reports and exports ──────────────────────────────────────────────────────────────

    def report_rows(self, run_id: str) -> Iterator[dict[str, Any]]:
        """Every item of the run with its attempt sums, in id order, streamed."""
        with self._read() as conn:
            yield from queries.report_rows(conn, run_id)

    def failed_items(self, run_id: str) -> Iterator[Any]:
        """(key, prompt, error, final) of the run's failed and cancelled items, streamed."""
        with self._read() as conn:
            yield from queries.failed_items(conn, run_id)

    def succeeded_page(self, run_id: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        """One page of the run's succeeded items (ids above `after_id`), a short read."""
        with self._read() as conn:
            return queries.succeeded_rows(conn, run_id, after_id, limit)

    # ── metrics ──────────────────────────────────────────────────────────────────────────

    def metrics_snapshot(self, since: datetime, day_start: datetime) -> MetricsSnapshot:
        """Every run's numbers; batch times and webhook times since `since`."""
        with self._read() as conn:
            runs = queries.metric_runs(conn)
            return MetricsSnapshot(
                runs=tuple(runs),
                items_by_run_state=tuple(queries.items_by_run_state(conn, [r.id for r in runs])),
                batch_counts=queries.batch_counts_by_state(conn),
                data=run_metric_data(conn, None, since),
                day_spend=batches.day_spend(conn, day_start),
                webhook_counts=tuple(deliveries.counts(conn)),
                webhook_times=tuple(deliveries.stored_times(conn, since)),
            )
