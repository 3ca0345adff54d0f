"""Items: counts, queued work, the items of a batch and their attempt rows, failing,
requeueing and cancelling them, and the prompt cache's lookups.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    update,
)

from pipeline.adapters.ledger.rows import ATTEMPTS, EVENTS, ITEMS, _chunks
from pipeline.adapters.ledger.runs import _placeholder
from pipeline.core.errors import InvalidTransition
from pipeline.core.reasons import ReasonCode
from pipeline.core.states import ITEM_TRANSITIONS, ItemState
from pipeline.core.values import Usage

NO_USAGE = Usage()

# ── items ────────────────────────────────────────────────────────────────────


def item_counts(conn: Connection, run_id: str) -> dict[str, int]:
    """Items by state; failed split into failed (retryable by `retry`) and failed_final."""
    rows = conn.execute(
        select(ITEMS.c.state, ITEMS.c.final, func.count())
        .where(ITEMS.c.run_id == run_id)
        .group_by(ITEMS.c.state, ITEMS.c.final)
    )
    counts: dict[str, int] = {}
    for state, final, n in rows:
        name = "failed_final" if state == ItemState.FAILED and final else state
        counts[name] = counts.get(name, 0) + n
    return counts


def has_open_items(conn: Connection, run_id: str) -> bool:
    """Whether any item of the run is still queued or in a batch: the first one found
    answers (every tick asks it of every active run; counting them read them all)."""
    found = conn.execute(
        select(ITEMS.c.id)
        .where(ITEMS.c.run_id == run_id, ITEMS.c.state.in_(["queued", "in_batch"]))
        .limit(1)
    ).first()
    return found is not None


def queued_items(conn: Connection, run_id: str, after_id: int, limit: int) -> list[Any]:
    """Queued items of a run in id order (for forming batches), starting after `after_id`."""
    return list(
        conn.execute(
            select(
                ITEMS.c.id,
                ITEMS.c.key,
                ITEMS.c.prompt,
                ITEMS.c.aspect_ratio,
                ITEMS.c.image_size,
                ITEMS.c.model,
                ITEMS.c.est_tokens,
                ITEMS.c.prompt_sha256,
                ITEMS.c.seed,
                ITEMS.c.refs,
            )
            .where(ITEMS.c.run_id == run_id, ITEMS.c.state == "queued", ITEMS.c.id > after_id)
            .order_by(ITEMS.c.id)
            .limit(limit)
        )
    )


def batch_request_rows(
    conn: Connection, batch_id: int, chunk: int = 5000
) -> Iterator[tuple[str, str, str, str, int | None, str | None]]:
    """(key, prompt, aspect_ratio, image_size, seed, refs) of a batch's items in id order:
    the JSONL. Items no longer in the batch (not sent: a reference image could not be
    uploaded) are left out.

    Plain SQL fetched a chunk at a time (streamed on PostgreSQL): a batch can hold 100,000
    items, and compiling and processing an ORM-level select per row cost more than the query."""
    mark = _placeholder(conn)
    result = conn.execution_options(stream_results=True).exec_driver_sql(
        "SELECT key, prompt, aspect_ratio, image_size, seed, refs FROM items "
        f"WHERE batch_id = {mark} AND state = 'in_batch' ORDER BY id",
        (batch_id,),
    )
    # Through the result, not its DBAPI cursor: with stream_results SQLAlchemy has already
    # buffered the first rows of a PostgreSQL server-side cursor.
    try:
        while rows := result.fetchmany(chunk):
            yield from rows  # type: ignore[misc]
    finally:
        result.close()


_BATCH_ITEM_COLUMNS = (
    ITEMS.c.id.label("item_id"),
    ITEMS.c.key,
    ITEMS.c.state,
    ITEMS.c.tries,
    ITEMS.c.fallback_used,
    ITEMS.c.prompt_sha256,
    ITEMS.c.prompt,
    ITEMS.c.aspect_ratio,
    ITEMS.c.image_size,
    ITEMS.c.batch_id,
    ITEMS.c.seed,
    ITEMS.c.refs,
)


def batch_attempts(conn: Connection, batch_id: int) -> list[Any]:
    """Every item of a batch, what harvest joins result lines against: those still in it
    (`outcome` None: no attempt row yet) and those whose attempt in it is recorded (with
    that attempt's outcome; a replay after a kill meets them again)."""
    recorded = (
        select(ATTEMPTS.c.outcome, *_BATCH_ITEM_COLUMNS)
        .join(ITEMS, ITEMS.c.id == ATTEMPTS.c.item_id)
        .where(ATTEMPTS.c.batch_id == batch_id, ATTEMPTS.c.duplicate == 0)
    )
    return [*open_batch_items(conn, batch_id), *conn.execute(recorded)]


def open_batch_items(conn: Connection, batch_id: int) -> list[Any]:
    """The items still in a batch, no attempt recorded for them yet (`outcome` None), as
    `batch_attempts` gives them. An item carries its batch (`items.batch_id`) while it is
    in flight; its attempt row is written once, with the outcome."""
    query = select(null().label("outcome"), *_BATCH_ITEM_COLUMNS).where(
        ITEMS.c.batch_id == batch_id, ITEMS.c.state == ItemState.IN_BATCH.value
    )
    return list(conn.execute(query))


def insert_attempts(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Attempt rows, each written once with its outcome: the exactly-once guard is the
    UNIQUE(item_id, batch_id, duplicate) key, so a replay after a kill that inserts the same
    (item, batch, duplicate) again does nothing (its cost is never counted twice)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
    statement = dialect_insert(ATTEMPTS).on_conflict_do_nothing(
        index_elements=["item_id", "batch_id", "duplicate"]
    )
    conn.execute(statement, list(rows))


def attempt_row(
    item_id: int,
    batch_id: int,
    model: str,
    outcome: str,
    now: datetime,
    *,
    reason: str | None = None,
    code: ReasonCode | None = None,
    status: int | None = None,
    usage: Usage = NO_USAGE,
    cost_nanos: int = 0,
    standard_nanos: int = 0,
    duplicate: int = 0,
) -> dict[str, Any]:
    """One attempt row for `insert_attempts`: every column, so rows of one insert share keys
    (duplicate 0: the try itself; n >= 1: the item's nth billed duplicate line)."""
    return {
        "item_id": item_id,
        "batch_id": batch_id,
        "duplicate": duplicate,
        "model": model,
        "outcome": outcome,
        "reason": reason,
        "reason_code": code,
        "reason_status": status,
        "input_tokens": usage.input,
        "output_image_tokens": usage.output_image,
        "output_text_tokens": usage.output_text,
        "thinking_tokens": usage.thinking,
        "cost_nanos": cost_nanos,
        "standard_nanos": standard_nanos,
        "recorded_at": now,
    }


def item_totals(conn: Connection, item_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Tokens and cost of each item summed over its recorded attempts."""
    rows = conn.execute(
        select(
            ATTEMPTS.c.item_id,
            func.sum(ATTEMPTS.c.input_tokens),
            func.sum(ATTEMPTS.c.output_image_tokens),
            func.sum(ATTEMPTS.c.output_text_tokens),
            func.sum(ATTEMPTS.c.thinking_tokens),
            func.sum(ATTEMPTS.c.cost_nanos),
        )
        .where(ATTEMPTS.c.item_id.in_(list(item_ids)), ATTEMPTS.c.outcome.is_not(None))
        .group_by(ATTEMPTS.c.item_id)
    )
    names = ("input", "output_image", "output_text", "thinking", "cost_nanos")
    return {r[0]: dict(zip(names, (int(v or 0) for v in r[1:]), strict=True)) for r in rows}


def open_keys(conn: Connection, run_ids: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    """key -> run id, for those of `keys` that an item of one of `run_ids` has while it is
    still open (queued or in a batch): names those runs are about to write."""
    found: dict[str, str] = {}
    if not run_ids or not keys:
        return found
    # The state is checked here, not in SQL: with it there, SQLite walks every open item of
    # those runs through ix_items_run_counts instead of looking the keys up in (run_id, key).
    for chunk in _chunks(sorted(set(keys)), 500):
        rows = conn.execute(
            select(ITEMS.c.key, ITEMS.c.run_id, ITEMS.c.state).where(
                ITEMS.c.run_id.in_(list(run_ids)), ITEMS.c.key.in_(list(chunk))
            )
        )
        for key, run_id, state in rows:
            if state in ("queued", "in_batch"):
                found.setdefault(key, run_id)
    return found


def transition_items(
    conn: Connection,
    run_id: str,
    item_ids: Sequence[int],
    from_: ItemState | None,
    to: ItemState,
    now: datetime,
    *,
    values: Mapping[str, Any] | None = None,
    rows: Sequence[Mapping[str, Any]] | None = None,
    guard: Sequence[Any] = (),
    where: Sequence[Any] | None = None,
    events: bool = True,
    detail: str | None = None,
    details: Sequence[str | None] | None = None,
    batch_id: int | None = None,
) -> int:
    """The one way items change state: the (from, to) pair is checked against
    ITEM_TRANSITIONS, then one guarded UPDATE (`state = from_` plus `guard`), then an event
    row per item. Returns how many rows moved; zero (someone moved them first) writes no event.
    An invalid pair raises InvalidTransition naming the items, the run and both states.

    `from_` None means the items were inserted in state `to` in this transaction and only
    their other columns are set now (the event says created: from None). The moved rows are
    `item_ids` (an IN list, in chunks, with `values`), or, with `rows`, one executemany whose
    parameter sets carry `iid` and whatever bind parameters `values` names (an executemany
    reports only a total, so once any row moved every item gets its event: harvest's
    callers hold the batch's lease, so none of its items moves under them). `details` gives
    each item's event detail (parallel to `item_ids`); otherwise `detail` is everyone's.
    With `where`, those conditions pick the rows instead of `item_ids` (a ranged update of
    many consecutive items); `events=False` leaves the event to the caller (a batch's event
    says which items went into it).
    """
    if from_ is not None and to not in ITEM_TRANSITIONS[from_]:
        raise InvalidTransition(
            f"items {_ids(item_ids)} of run {run_id} cannot move from {from_.value} to {to.value}"
        )
    cond = [ITEMS.c.state == (to if from_ is None else from_).value, *guard]
    sets = {"state": to.value, **(values or {})}
    moved = 0
    if where is not None:
        moved = conn.execute(update(ITEMS).where(*where, *cond).values(**sets)).rowcount
    elif rows is not None:
        if rows:
            stmt = update(ITEMS).where(ITEMS.c.id == bindparam("iid"), *cond).values(**sets)
            moved = conn.execute(stmt, list(rows)).rowcount
    else:
        for chunk in _chunks(list(item_ids), 500):
            stmt = update(ITEMS).where(ITEMS.c.id.in_(chunk), *cond).values(**sets)
            moved += conn.execute(stmt).rowcount
    if moved == 0 or not events:
        return moved
    event_from = None if from_ is None else from_.value
    texts = details if details is not None else [detail] * len(item_ids)
    item_events(conn, run_id, item_ids, event_from, to.value, None, now, batch_id, texts)
    return moved


def _ids(item_ids: Sequence[int]) -> str:
    """Item ids for a message: all of a few, the first ten and a count of many."""
    shown = ", ".join(str(i) for i in item_ids[:10])
    more = len(item_ids) - 10
    return f"[{shown}{f' and {more} more' if more > 0 else ''}]"


def fail_items_for_good(
    conn: Connection,
    run_id: str,
    reasons: Sequence[tuple[str, str]],
    from_: str,
    now: datetime,
    code: ReasonCode = ReasonCode.CONFLICT,
) -> int:
    """Items of the run (by key) in state `from_` fail for good with their reasons (of this
    code: their object name is taken), before anything was sent for them: no attempt, no
    cost (an item just recorded as failed, or a queued one). Guarded; returns how many
    moved."""
    source = None if from_ == ItemState.FAILED else ItemState(from_)
    moved = 0
    for chunk in _chunks(list(reasons), 500):
        ids = dict(
            conn.execute(
                select(ITEMS.c.key, ITEMS.c.id).where(
                    ITEMS.c.run_id == run_id,
                    ITEMS.c.key.in_([key for key, _ in chunk]),
                    ITEMS.c.state == from_,
                )
            ).all()
        )
        params = [{"iid": ids[k], "err": r} for k, r in chunk if k in ids]
        if not params:
            continue
        transition_items(
            conn,
            run_id,
            [p["iid"] for p in params],
            source,
            ItemState.FAILED,
            now,
            values={
                "final": True,
                "error": bindparam("err"),
                "reason_code": code,
                "finished_at": now,
            },
            rows=params,
            details=[p["err"][:500] for p in params],
        )
        moved += len(params)
    return moved


def requeue_items(conn: Connection, run_id: str, *, include_final: bool, now: datetime) -> int:
    """`retry`: failed (and with include_final, failed for good) items back to queued."""
    cond = [ITEMS.c.run_id == run_id, ITEMS.c.state.in_(["failed", "cancelled"])]
    if not include_final:
        cond.append(or_(ITEMS.c.final.is_(False), ITEMS.c.state == "cancelled"))
    by_state: dict[str, list[int]] = {"failed": [], "cancelled": []}
    for item_id, state in conn.execute(select(ITEMS.c.id, ITEMS.c.state).where(*cond)):
        by_state[state].append(item_id)
    for state, ids in by_state.items():
        transition_items(
            conn,
            run_id,
            ids,
            ItemState(state),
            ItemState.QUEUED,
            now,
            values={
                "final": False,
                "error": None,
                "reason_code": None,
                "batch_id": None,
                "tries": 0,
            },
            detail="retry requested",
        )
    return sum(map(len, by_state.values()))


def cancel_open_items(conn: Connection, run_id: str, now: datetime) -> int:
    """Queued items of a cancelled run become cancelled (in-batch ones wait for the batch)."""
    ids = [
        r[0]
        for r in conn.execute(
            select(ITEMS.c.id).where(ITEMS.c.run_id == run_id, ITEMS.c.state == "queued")
        )
    ]
    transition_items(
        conn,
        run_id,
        ids,
        ItemState.QUEUED,
        ItemState.CANCELLED,
        now,
        values={
            "error": "run cancelled",
            "reason_code": ReasonCode.RUN_CANCELLED,
            "finished_at": now,
        },
        detail="run cancelled",
    )
    return len(ids)


def item_events(
    conn: Connection,
    run_id: str,
    item_ids: Iterable[int],
    from_: str | None,
    to: str,
    detail: str | None,
    now: datetime,
    batch_id: int | None = None,
    details: Iterable[str | None] | None = None,
) -> None:
    """An event row per item; `details`, when given, is each one's detail (else `detail`)."""
    texts = details if details is not None else itertools.repeat(detail)
    rows = [
        {
            "at": now,
            "run_id": run_id,
            "batch_id": batch_id,
            "item_id": i,
            "from_state": from_,
            "to_state": to,
            "detail": text,
        }
        for i, text in zip(item_ids, texts, strict=False)
    ]
    if rows:
        conn.execute(insert(EVENTS), rows)


def any_stored_image(conn: Connection, exclude_run: str) -> bool:
    """Whether another run has any stored image (else the prompt cache cannot hit)."""
    found = conn.execute(select(ITEMS.c.id).where(*_stored_elsewhere(exclude_run)).limit(1)).first()
    return found is not None


def cached_hashes(conn: Connection, hashes: Iterable[str], exclude_run: str) -> set[str]:
    """Which of these content hashes another run has a stored image for (prompt cache).

    Raw SQL with a literal state (so SQLite can use the partial index ix_items_cache), in
    chunks of 1,000: recording a run asks this for every item."""
    found: set[str] = set()
    mark = _placeholder(conn)
    for chunk in _chunks(sorted(set(hashes)), 1000):
        sql = (
            "SELECT prompt_sha256 FROM items WHERE state = 'succeeded' AND prompt_sha256 IN "
            f"({', '.join([mark] * len(chunk))}) AND run_id <> {mark} AND uri IS NOT NULL"
        )
        found.update(row[0] for row in conn.exec_driver_sql(sql, (*chunk, exclude_run)))
    return found


def _stored_elsewhere(exclude_run: str) -> tuple[Any, ...]:
    """Items the prompt cache can serve from: succeeded, stored, of another run. The state is
    a literal, not a bound parameter: only then can SQLite use the partial index on
    prompt_sha256 (ix_items_cache, WHERE state = 'succeeded'); `cached_hashes` spells the
    same conditions in raw SQL."""
    return (
        ITEMS.c.state == literal_column("'succeeded'"),
        ITEMS.c.run_id != exclude_run,
        ITEMS.c.uri.is_not(None),
    )
