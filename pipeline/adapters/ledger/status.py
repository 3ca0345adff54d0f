"""A run's `status` figures answered from the covering indexes of migration 0011
(`ix_items_run_counts`, `ix_attempts_batch_sums`), so a run of a million items is counted
without reading its item or attempt rows: item counts, attempt sums per batch, spend, and
the metrics' rows derived from those sums (`metric_rows`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select

from pipeline.adapters.ledger.batches import UNFINISHED_BATCH_STATES
from pipeline.adapters.ledger.rows import ATTEMPTS, BATCHES, ITEMS
from pipeline.core.states import RESERVING_BATCH_STATES, ItemState

_REASON_COLUMNS = (ATTEMPTS.c.outcome, ATTEMPTS.c.reason_code, ATTEMPTS.c.reason_status)


class ModelCost(NamedTuple):
    """`queries.cost_by_model`'s row: a model's cost over recorded attempts and its images."""

    model: str
    cost_nanos: int
    images: int


def run_attempt_totals(conn: Connection, run_id: str) -> list[Any]:
    """(outcome, duplicate, model, n, cost_nanos) of a run's attempts, grouped (per batch:
    a row may repeat for several batches). Read through the run's batches from
    `ix_attempts_batch_sums` alone, in its order, so no attempt row is read."""
    query = (
        select(
            ATTEMPTS.c.batch_id,
            ATTEMPTS.c.outcome,
            ATTEMPTS.c.duplicate,
            ATTEMPTS.c.model,
            func.count().label("n"),
            func.coalesce(func.sum(ATTEMPTS.c.cost_nanos), 0).label("cost_nanos"),
        )
        .where(ATTEMPTS.c.batch_id.in_(select(BATCHES.c.id).where(BATCHES.c.run_id == run_id)))
        .group_by(ATTEMPTS.c.batch_id, ATTEMPTS.c.outcome, ATTEMPTS.c.duplicate, ATTEMPTS.c.model)
    )
    return list(conn.execute(query))


def status_spend(conn: Connection, run_id: str, totals: Sequence[Any]) -> tuple[int, int]:
    """`run_spend` (spent, reserved) with the spent part summed from `run_attempt_totals`
    rows already read, so `status` reads the run's attempts once."""
    batches = list(
        conn.execute(
            select(BATCHES.c.id, BATCHES.c.state, BATCHES.c.est_nanos).where(
                BATCHES.c.run_id == run_id
            )
        )
    )
    finished = {b.id for b in batches if b.state not in UNFINISHED_BATCH_STATES}
    spent = sum(int(row.cost_nanos) for row in totals if row.batch_id in finished)
    reserved = sum(int(b.est_nanos) for b in batches if b.state in RESERVING_BATCH_STATES)
    return spent, reserved


def run_error_reasons(conn: Connection, run_id: str, outcomes: Sequence[str]) -> list[Any]:
    """(outcome, reason code, reason status, n) of a run's attempts with one of `outcomes` (those
    `run_attempt_totals` found besides successes), duplicates apart, grouped: what
    `attempt_reasons` gives of the run's failed attempts. Named outcomes let the index
    seek to them instead of passing over every success."""
    if not outcomes:
        return []
    query = (
        select(*_REASON_COLUMNS, func.count().label("n"))
        .where(
            ATTEMPTS.c.batch_id.in_(select(BATCHES.c.id).where(BATCHES.c.run_id == run_id)),
            ATTEMPTS.c.outcome.in_(list(outcomes)),
            ATTEMPTS.c.duplicate == 0,
        )
        .group_by(*_REASON_COLUMNS)
    )
    return list(conn.execute(query))


def status_counts(conn: Connection, run_id: str) -> tuple[dict[str, int], int]:
    """(`item_counts`, `cached_count`) of a run in one pass over `ix_items_run_counts`."""
    rows = conn.execute(
        select(ITEMS.c.state, ITEMS.c.final, ITEMS.c.cached, func.count())
        .where(ITEMS.c.run_id == run_id)
        .group_by(ITEMS.c.state, ITEMS.c.final, ITEMS.c.cached)
    )
    counts: dict[str, int] = {}
    cached = 0
    for state, final, is_cached, n in rows:
        name = "failed_final" if state == ItemState.FAILED and final else state
        counts[name] = counts.get(name, 0) + n
        cached += n if is_cached else 0
    return counts, cached


def costs_from_totals(totals: Sequence[Any]) -> list[ModelCost]:
    """`queries.cost_by_model` of a run, summed from its `run_attempt_totals` rows."""
    by_model: dict[str, list[int]] = {}
    for row in totals:
        if row.outcome is None:
            continue
        sums = by_model.setdefault(row.model, [0, 0])
        sums[0] += int(row.cost_nanos)
        sums[1] += int(row.n) if row.outcome == "succeeded" else 0
    return [ModelCost(m, cost, images) for m, (cost, images) in sorted(by_model.items())]


def duplicates_from_totals(totals: Sequence[Any]) -> tuple[int, int]:
    """`queries.duplicate_totals` of a run (lines, cost), from its `run_attempt_totals`."""
    rows = [row for row in totals if row.duplicate > 0]
    return sum(int(r.n) for r in rows), sum(int(r.cost_nanos) for r in rows)


def reasons_from_totals(conn: Connection, run_id: str, totals: Sequence[Any]) -> list[Any]:
    """`queries.attempt_reasons` of a run: successes counted from the totals, only the
    failed attempts read (by outcome, through the index) for their codes."""
    tried = [r for r in totals if r.outcome is not None and r.duplicate == 0]
    succeeded = sum(int(r.n) for r in tried if r.outcome == "succeeded")
    failed = sorted({r.outcome for r in tried if r.outcome != "succeeded"})
    found = [tuple(row) for row in run_error_reasons(conn, run_id, failed)]
    return [*found, ("succeeded", None, None, succeeded)] if succeeded else found
