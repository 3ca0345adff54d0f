"""Read-only queries for reports, the prompt cache's sources, metrics, budgets and
notifications.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    func,
    or_,
    select,
)

from pipeline.adapters.ledger.items import _stored_elsewhere, transition_items
from pipeline.adapters.ledger.rows import (
    ATTEMPTS,
    BATCHES,
    ITEMS,
    REJECTS,
    RUNS,
    RunRow,
    _run,
)
from pipeline.core.states import ItemState

# ── reports ──────────────────────────────────────────────────────────────────


def report_rows(
    conn: Connection, run_id: str, chunk: int = 2000, *, finished_only: bool = False
) -> Iterator[dict[str, Any]]:
    """Every item of a run with its attempt sums, in id order: one grouped join, streamed.
    With `finished_only`, only items no longer queued or in a batch (the manifest's)."""
    query = _item_sums_query().where(ITEMS.c.run_id == run_id)
    if finished_only:
        query = query.where(ITEMS.c.state.not_in(["queued", "in_batch"]))
    yield from _sum_entries(conn.execution_options(yield_per=chunk).execute(query))


REPORT_ITEM_COLUMNS = ("key", "state", "model", "uri", "sha256", "cached", "error", "refs", "seed")
"""The item columns `report_columns` reads (manifest: plus `MANIFEST_ITEM_COLUMNS`)."""
MANIFEST_ITEM_COLUMNS = ("prompt", "aspect_ratio", "image_size")
SUM_COLUMNS = (
    "attempts",
    "duplicates",
    "input_tokens",
    "output_image_tokens",
    "output_text_tokens",
    "thinking_tokens",
    "cost_nanos",
    "standard_nanos",
    "served_by",
)
"""The attempt sums `report_columns` gives beside each item, in this order."""


def report_columns(
    conn: Connection,
    run_id: str,
    chunk: int = 10_000,
    *,
    finished_only: bool = False,
    manifest: bool = False,
) -> Iterator[dict[str, Sequence[Any]]]:
    """The items of a run with their attempt sums, in id order, as column chunks of up to
    `chunk` rows: {column name: values}, names from REPORT_ITEM_COLUMNS (plus
    MANIFEST_ITEM_COLUMNS with `manifest`) and SUM_COLUMNS. One grouped join, streamed;
    only the columns a report shows are read (no datetimes to parse), and the rows are
    turned into columns in C (`zip`), so a million items cost no Python object per field.
    With `finished_only`, only items no longer queued or in a batch (the manifest's)."""
    names = REPORT_ITEM_COLUMNS + (MANIFEST_ITEM_COLUMNS if manifest else ())
    query = _item_sums_query(ITEMS.c.id, *(ITEMS.c[name] for name in names)).where(
        ITEMS.c.run_id == run_id
    )
    if finished_only:
        query = query.where(ITEMS.c.state.not_in(["queued", "in_batch"]))
    result = conn.execution_options(yield_per=chunk).execute(query)
    width = len(names) + 1
    for part in result.partitions(chunk):
        columns = list(zip(*part, strict=True))
        chunk_columns: dict[str, Sequence[Any]] = dict(zip(names, columns[1:width], strict=True))
        sums = columns[width:]
        for name, values in zip(SUM_COLUMNS[:-1], sums[:-1], strict=True):
            # PostgreSQL sums bigints as numeric (Decimal): ints, as the report shows them.
            chunk_columns[name] = list(map(int, values))
        chunk_columns["served_by"] = sums[-1]
        yield chunk_columns


def succeeded_rows(
    conn: Connection, run_id: str, after_id: int, limit: int
) -> list[dict[str, Any]]:
    """One page (up to `limit`) of a run's succeeded items with their attempt sums, as
    `report_rows` gives them, whose id is above `after_id`, in id order. Pages are short
    transactions, so an export of any size holds no read open while it copies images."""
    query = (
        _item_sums_query()
        .where(ITEMS.c.run_id == run_id, ITEMS.c.state == "succeeded", ITEMS.c.id > after_id)
        .limit(limit)
    )
    return list(_sum_entries(conn.execute(query)))


def _item_sums_query(*item_columns: Any) -> Any:
    """Items (all columns, or `item_columns` with the id first) joined with the sums over
    their counted attempts, grouped per item, by id."""
    counted = and_(
        ATTEMPTS.c.item_id == ITEMS.c.id,
        ATTEMPTS.c.outcome.is_not(None),
        ATTEMPTS.c.outcome != "not_sent",
    )
    sums = [
        # Tries: billed duplicate lines are paid for (in the sums below) but are not tries.
        func.count(ATTEMPTS.c.id).filter(ATTEMPTS.c.duplicate == 0),
        func.count(ATTEMPTS.c.id).filter(ATTEMPTS.c.duplicate > 0),
        *(
            func.coalesce(func.sum(column), 0)
            for column in (
                ATTEMPTS.c.input_tokens,
                ATTEMPTS.c.output_image_tokens,
                ATTEMPTS.c.output_text_tokens,
                ATTEMPTS.c.thinking_tokens,
                ATTEMPTS.c.cost_nanos,
                ATTEMPTS.c.standard_nanos,
            )
        ),
        # The model that made the image: its succeeded attempt's (the fallback's when it did).
        func.max(case((ATTEMPTS.c.outcome == "succeeded", ATTEMPTS.c.model))),
    ]
    labelled = [s.label(f"sum_{i}") for i, s in enumerate(sums)]
    if item_columns:
        # Grouped by the primary key alone (the other columns depend on it): SQLite then
        # sorts ids, not whole rows.
        return (
            select(*item_columns, *labelled)
            .select_from(ITEMS.outerjoin(ATTEMPTS, counted))
            .group_by(ITEMS.c.id)
            .order_by(ITEMS.c.id)
        )
    return (
        select(ITEMS, *labelled)
        .select_from(ITEMS.outerjoin(ATTEMPTS, counted))
        .group_by(*ITEMS.c)
        .order_by(ITEMS.c.id)
    )


def _sum_entries(rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
    width = len(ITEMS.c)
    for row in rows:
        values = tuple(row)[width:]
        entry = dict(
            zip(_EMPTY_SUMS, [int(v or 0) for v in values[:-1]] + [values[-1]], strict=True)
        )
        entry["item"] = row
        yield entry


_EMPTY_SUMS: dict[str, Any] = {
    "attempts": 0,
    "duplicates": 0,
    "input_tokens": 0,
    "output_image_tokens": 0,
    "output_text_tokens": 0,
    "thinking_tokens": 0,
    "cost_nanos": 0,
    "standard_nanos": 0,
    "served_by": None,
}


def rejects_of_run(conn: Connection, run_id: str) -> Iterator[Any]:
    yield from conn.execute(
        select(REJECTS.c.row, REJECTS.c.key, REJECTS.c.reason)
        .where(REJECTS.c.run_id == run_id)
        .order_by(REJECTS.c.row)
    )


# ── prompt cache, metrics, budgets (cost control and visibility) ─────────────


def cache_sources(
    conn: Connection, hashes: Sequence[str], exclude_run: str
) -> dict[str, list[Any]]:
    """Stored images of other runs for these content hashes, best source first: images
    that were paid for (not themselves cached) before copies, oldest first."""
    found: dict[str, list[Any]] = {}
    if not hashes:
        return found
    rows = conn.execute(
        select(
            ITEMS.c.id,
            ITEMS.c.run_id,
            ITEMS.c.key,
            ITEMS.c.prompt_sha256,
            ITEMS.c.uri,
            ITEMS.c.sha256,
            ITEMS.c.model,
        )
        .where(ITEMS.c.prompt_sha256.in_(list(hashes)), *_stored_elsewhere(exclude_run))
        .order_by(ITEMS.c.prompt_sha256, ITEMS.c.cached, ITEMS.c.id)
    )
    for row in rows:
        found.setdefault(row.prompt_sha256, []).append(row)
    return found


def mark_cached(
    conn: Connection,
    run_id: str,
    item_id: int,
    uri: str,
    sha256: str,
    now: datetime,
    detail: str,
    model: str,
) -> bool:
    """A queued item served from the prompt cache: succeeded, cached, no attempt (guarded).
    `model` is the model that made the image (the source's: a fallback model may have)."""
    moved = transition_items(
        conn,
        run_id,
        [item_id],
        ItemState.QUEUED,
        ItemState.SUCCEEDED,
        now,
        values={
            "cached": True,
            "uri": uri,
            "sha256": sha256,
            "error": None,
            "reason_code": None,
            "finished_at": now,
            "model": model,
        },
        detail=detail[:500],
    )
    return moved == 1


def cache_savings(conn: Connection, run_id: str) -> int:
    """Nano-dollars the prompt cache saved a run: for each cached item, what the earliest
    paid-for image with the same content hash cost (summed over its attempts)."""
    origin = ITEMS.alias("origin")
    first_paid = (
        select(func.min(origin.c.id))
        .where(
            origin.c.prompt_sha256 == ITEMS.c.prompt_sha256,
            origin.c.state == "succeeded",
            origin.c.cached.is_(False),
            origin.c.run_id != run_id,
        )
        .correlate(ITEMS)
        .scalar_subquery()
    )
    cost = (
        select(func.coalesce(func.sum(ATTEMPTS.c.cost_nanos), 0))
        .where(ATTEMPTS.c.item_id == first_paid)
        .correlate(ITEMS)
        .scalar_subquery()
    )
    total = conn.execute(
        select(func.coalesce(func.sum(cost), 0)).where(
            ITEMS.c.run_id == run_id, ITEMS.c.cached.is_(True), ITEMS.c.state == "succeeded"
        )
    ).scalar_one()
    return int(total or 0)


def runs_to_notify(conn: Connection) -> list[RunRow]:
    """Finished runs whose notification has not been claimed yet."""
    query = select(RUNS).where(RUNS.c.state == "finished", RUNS.c.notified_at.is_(None))
    return [_run(r) for r in conn.execute(query.order_by(RUNS.c.finished_at))]


def metric_runs(conn: Connection) -> list[RunRow]:
    """Runs worth a metric series: every active run and the latest run of each job."""
    latest = (
        select(RUNS.c.job, func.max(RUNS.c.created_at).label("at")).group_by(RUNS.c.job).subquery()
    )
    query = (
        select(RUNS)
        .outerjoin(latest, and_(latest.c.job == RUNS.c.job, latest.c.at == RUNS.c.created_at))
        .where(or_(RUNS.c.state == "active", latest.c.job.is_not(None)))
        .order_by(RUNS.c.created_at)
    )
    return [_run(r) for r in conn.execute(query)]


def batch_counts_by_state(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(BATCHES.c.state, func.count()).group_by(BATCHES.c.state))
    return {state: int(n) for state, n in rows}


def cost_by_model(conn: Connection, run_id: str | None = None) -> list[Any]:
    """(model, cost_nanos, images) over recorded attempts; images = succeeded attempts."""
    query = select(
        ATTEMPTS.c.model,
        func.coalesce(func.sum(ATTEMPTS.c.cost_nanos), 0).label("cost_nanos"),
        func.count().filter(ATTEMPTS.c.outcome == "succeeded").label("images"),
    ).where(ATTEMPTS.c.outcome.is_not(None))
    if run_id is not None:
        query = query.join(ITEMS, ITEMS.c.id == ATTEMPTS.c.item_id).where(ITEMS.c.run_id == run_id)
    return list(conn.execute(query.group_by(ATTEMPTS.c.model).order_by(ATTEMPTS.c.model)))


def attempt_reasons(conn: Connection, run_id: str | None = None) -> Iterator[Any]:
    """(outcome, reason code, reason status, count) of recorded attempts, grouped (the
    error classes' source)."""
    columns = (ATTEMPTS.c.outcome, ATTEMPTS.c.reason_code, ATTEMPTS.c.reason_status)
    query = select(*columns, func.count().label("n")).where(
        ATTEMPTS.c.outcome.is_not(None), ATTEMPTS.c.duplicate == 0
    )
    if run_id is not None:
        query = query.join(ITEMS, ITEMS.c.id == ATTEMPTS.c.item_id).where(ITEMS.c.run_id == run_id)
    yield from conn.execute(query.group_by(*columns))


def duplicate_totals(conn: Connection, run_id: str | None = None) -> tuple[int, int]:
    """(billed duplicate lines, their cost in nano-dollars), of a run or of all runs."""
    query = select(
        func.count(ATTEMPTS.c.id), func.coalesce(func.sum(ATTEMPTS.c.cost_nanos), 0)
    ).where(ATTEMPTS.c.duplicate > 0)
    if run_id is not None:
        query = query.join(ITEMS, ITEMS.c.id == ATTEMPTS.c.item_id).where(ITEMS.c.run_id == run_id)
    lines, cost = conn.execute(query).one()
    return int(lines), int(cost)


def batch_times(
    conn: Connection, run_id: str | None = None, since: datetime | None = None
) -> Iterator[Any]:
    """(state, created_at, submitted_at, finished_at) of every batch (or a run's), or of
    those submitted or finished since `since`."""
    query = select(
        BATCHES.c.state, BATCHES.c.created_at, BATCHES.c.submitted_at, BATCHES.c.finished_at
    )
    if run_id is not None:
        query = query.where(BATCHES.c.run_id == run_id)
    if since is not None:
        query = query.where(or_(BATCHES.c.submitted_at >= since, BATCHES.c.finished_at >= since))
    yield from conn.execute(query)


def items_by_run_state(conn: Connection, run_ids: Sequence[str]) -> list[Any]:
    """(run_id, state, final, count) for these runs."""
    if not run_ids:
        return []
    return list(
        conn.execute(
            select(ITEMS.c.run_id, ITEMS.c.state, ITEMS.c.final, func.count())
            .where(ITEMS.c.run_id.in_(list(run_ids)))
            .group_by(ITEMS.c.run_id, ITEMS.c.state, ITEMS.c.final)
        )
    )


def failed_items(conn: Connection, run_id: str, chunk: int = 2000) -> Iterator[Any]:
    """(key, prompt, error, final) of a run's failed and cancelled items, in id order."""
    last = 0
    while True:
        rows = list(
            conn.execute(
                select(ITEMS.c.id, ITEMS.c.key, ITEMS.c.prompt, ITEMS.c.error, ITEMS.c.final)
                .where(
                    ITEMS.c.run_id == run_id,
                    ITEMS.c.state.in_(["failed", "cancelled"]),
                    ITEMS.c.id > last,
                )
                .order_by(ITEMS.c.id)
                .limit(chunk)
            )
        )
        if not rows:
            return
        last = rows[-1].id
        yield from rows


def cached_count(conn: Connection, run_id: str) -> int:
    """Items of a run served from the prompt cache."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(ITEMS)
            .where(ITEMS.c.run_id == run_id, ITEMS.c.cached.is_(True))
        ).scalar_one()
    )
