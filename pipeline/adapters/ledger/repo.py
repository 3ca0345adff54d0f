"""Every query of the ledger. Callers get frozen values, never ORM objects, and change state
only through the guarded updates here: `UPDATE ... WHERE id = :id AND state = :from`, with
the event row in the same transaction. Zero rows matched means someone else moved it first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from pipeline.adapters.ledger.models import Attempt, Batch, Event, Item, Lease, Reject, Run
from pipeline.core.errors import NotFoundError, StaleTransition
from pipeline.core.states import (
    LIVE_BATCH_STATES,
    BatchState,
    ItemState,
    check_batch_transition,
)

T = TypeVar("T")
RUNS = cast(Table, Run.__table__)
BATCHES = cast(Table, Batch.__table__)
ITEMS = cast(Table, Item.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
REJECTS = cast(Table, Reject.__table__)
EVENTS = cast(Table, Event.__table__)
LEASES = cast(Table, Lease.__table__)


@dataclass(frozen=True)
class RunRow:
    id: str
    job: str
    state: str
    model: str
    fallback_model: str | None
    output_uri: str
    run_date: str
    max_attempts: int
    max_enqueued_tokens: int
    max_requests_per_batch: int
    max_batch_bytes: int
    budget_nanos: int | None
    overwrite: bool
    use_cache: bool
    item_count: int
    rejected_count: int
    estimated_nanos: int
    created_at: datetime
    finished_at: datetime | None
    spec_path: str
    hold_reason: str | None = None
    hold_detail: str | None = None
    hold_since: datetime | None = None
    hold_not_before: datetime | None = None
    hold_tries: int = 0
    channel: str | None = None
    """NULL: the Gemini Developer API; else the run's `[channel]` as JSON."""


@dataclass(frozen=True)
class BatchRow:
    id: int
    run_id: str
    seq: int
    model: str
    display_name: str
    state: str
    remote_name: str | None
    remote_state: str | None
    file_name: str | None
    shard_sha256: str | None
    file_uploaded_at: datetime | None
    output_file: str | None
    item_count: int
    est_tokens: int
    est_nanos: int
    not_before: datetime | None
    create_tries: int
    last_error: str | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None


def _run(row: Any) -> RunRow:
    return RunRow(**{f: getattr(row, f) for f in RunRow.__dataclass_fields__})


def _batch(row: Any) -> BatchRow:
    return BatchRow(**{f: getattr(row, f) for f in BatchRow.__dataclass_fields__})


# ── runs ─────────────────────────────────────────────────────────────────────


def find_run_by_identity(conn: Connection, identity: str) -> RunRow | None:
    row = conn.execute(select(RUNS).where(RUNS.c.identity == identity)).first()
    return _run(row) if row else None


def latest_active_run_like(
    conn: Connection, job: str, spec_json: str, input_sha256: str, run_date: str
) -> RunRow | None:
    """The newest active run with this spec, input and date: the run's identity without the
    --force nonce, so it finds forced runs of the spec too."""
    row = conn.execute(
        select(RUNS)
        .where(
            RUNS.c.job == job,
            RUNS.c.state == "active",
            RUNS.c.input_sha256 == input_sha256,
            RUNS.c.run_date == run_date,
            RUNS.c.spec_json == spec_json,
        )
        .order_by(RUNS.c.created_at.desc(), RUNS.c.id.desc())
        .limit(1)
    ).first()
    return _run(row) if row else None


def insert_run(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(RUNS).values(**values))
    _event(
        conn, values["id"], None, None, None, values["state"], "run created", values["created_at"]
    )


ITEM_ROW = (
    "run_id",
    "key",
    "row",
    "prompt",
    "prompt_sha256",
    "aspect_ratio",
    "image_size",
    "model",
    "est_tokens",
)
"""The columns of a new item row as `insert_items` takes it; the rest start the same for all."""


def insert_items(
    conn: Connection, rows: list[tuple[Any, ...]], *, state: str, batch_id: int | None
) -> None:
    """New item rows (tuples in ITEM_ROW order), all in one state and batch, through the
    driver's executemany: at a million rows SQLAlchemy's per-row parameter processing cost
    more than the database. The shared values are SQL literals, checked here, so each row
    binds only its own nine."""
    if not rows:
        return
    state_sql = f"'{ItemState(state).value}'"
    batch_sql = "NULL" if batch_id is None else str(int(batch_id))
    marks = ", ".join(_placeholder(conn) for _ in ITEM_ROW)
    sql = (
        f"INSERT INTO items ({', '.join(ITEM_ROW)}, state, final, tries, fallback_used, cached, "
        f"batch_id) VALUES ({marks}, {state_sql}, false, 0, false, false, {batch_sql})"
    )
    conn.exec_driver_sql(sql, rows)


def _placeholder(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def insert_rejects(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(insert(REJECTS), list(rows))


def update_run_counts(conn: Connection, run_id: str, items: int, rejected: int, est: int) -> None:
    conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id)
        .values(item_count=items, rejected_count=rejected, estimated_nanos=est)
    )


def get_run(conn: Connection, ref: str) -> RunRow:
    """A run by id, or a job name meaning its latest run; NotFoundError otherwise."""
    row = conn.execute(select(RUNS).where(RUNS.c.id == ref)).first()
    if row is None:
        row = conn.execute(
            select(RUNS).where(RUNS.c.job == ref).order_by(RUNS.c.created_at.desc()).limit(1)
        ).first()
    if row is None:
        raise NotFoundError(f"no run or job named {ref!r}; `nanobatch status` lists the runs")
    return _run(row)


def run_outputs(conn: Connection) -> list[tuple[str, str]]:
    """(run id, output uri) of every run, oldest first: which runs share a location."""
    query = select(RUNS.c.id, RUNS.c.output_uri).order_by(RUNS.c.created_at, RUNS.c.id)
    return [(run_id, uri) for run_id, uri in conn.execute(query)]


def list_runs(conn: Connection, *, active_only: bool = False) -> list[RunRow]:
    query = select(RUNS).order_by(RUNS.c.created_at)
    if active_only:
        query = query.where(RUNS.c.state == "active")
    return [_run(r) for r in conn.execute(query)]


def set_run_state(conn: Connection, run_id: str, from_: str, to: str, now: datetime) -> bool:
    values: dict[str, Any] = {"state": to}
    if to != "active":
        values["finished_at"] = now
    result = conn.execute(
        update(RUNS).where(RUNS.c.id == run_id, RUNS.c.state == from_).values(**values)
    )
    if result.rowcount != 1:
        return False
    _event(conn, run_id, None, None, from_, to, None, now)
    return True


def set_run_budget(conn: Connection, run_id: str, nanos: int, now: datetime) -> int | None:
    """A new budget cap for the run (`nanobatch budget`), with an event saying what it was;
    returns the old cap (None: there was none)."""
    old, state = conn.execute(
        select(RUNS.c.budget_nanos, RUNS.c.state).where(RUNS.c.id == run_id)
    ).one()
    conn.execute(update(RUNS).where(RUNS.c.id == run_id).values(budget_nanos=nanos))
    _event(conn, run_id, None, None, state, state, f"budget_nanos {old} -> {nanos}", now)
    return cast(int | None, old)


def hold_run(
    conn: Connection,
    run_id: str,
    reason: str,
    detail: str,
    now: datetime,
    delay_s: Callable[[int], float],
) -> datetime | None:
    """Hold an active run, or hold it again: its reason code and detail, one more failed try,
    and no try before now + delay_s(tries). The next try's time; None when the run is no
    longer active or another tick recorded a try of it first."""
    row = conn.execute(
        select(RUNS.c.hold_tries, RUNS.c.hold_since).where(
            RUNS.c.id == run_id, RUNS.c.state == "active"
        )
    ).first()
    if row is None:
        return None
    tries = int(row.hold_tries or 0) + 1
    until = now + timedelta(seconds=delay_s(tries))
    moved = conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id, RUNS.c.state == "active", RUNS.c.hold_tries == tries - 1)
        .values(
            hold_reason=reason,
            hold_detail=detail,
            hold_since=row.hold_since or now,
            hold_not_before=until,
            hold_tries=tries,
        )
    ).rowcount
    if moved != 1:
        return None
    _event(conn, run_id, None, None, "active", "held", f"{reason}: {detail}"[:500], now)
    return until


def release_hold(conn: Connection, run_id: str, now: datetime) -> bool:
    """Clear an active run's hold (its try went through); False when it was not held."""
    moved = conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id, RUNS.c.state == "active", RUNS.c.hold_reason.is_not(None))
        .values(
            hold_reason=None, hold_detail=None, hold_since=None, hold_not_before=None, hold_tries=0
        )
    ).rowcount
    if moved != 1:
        return False
    _event(conn, run_id, None, None, "held", "active", "hold cleared", now)
    return True


def mark_run_notified(conn: Connection, run_id: str, now: datetime) -> bool:
    result = conn.execute(
        update(RUNS)
        .where(RUNS.c.id == run_id, RUNS.c.notified_at.is_(None))
        .values(notified_at=now)
    )
    return result.rowcount == 1


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
            )
            .where(ITEMS.c.run_id == run_id, ITEMS.c.state == "queued", ITEMS.c.id > after_id)
            .order_by(ITEMS.c.id)
            .limit(limit)
        )
    )


def batch_request_rows(
    conn: Connection, batch_id: int, chunk: int = 5000
) -> Iterator[tuple[str, str, str, str]]:
    """(key, prompt, aspect_ratio, image_size) of a batch's items in id order: the JSONL.

    Plain SQL fetched a chunk at a time (streamed on PostgreSQL): a batch can hold 100,000
    items, and compiling and processing an ORM-level select per row cost more than the query."""
    mark = _placeholder(conn)
    result = conn.execution_options(stream_results=True).exec_driver_sql(
        "SELECT items.key, items.prompt, items.aspect_ratio, items.image_size FROM attempts "
        f"JOIN items ON items.id = attempts.item_id WHERE attempts.batch_id = {mark} "
        "AND attempts.duplicate = 0 ORDER BY items.id",
        (batch_id,),
    )
    # Through the result, not its DBAPI cursor: with stream_results SQLAlchemy has already
    # buffered the first rows of a PostgreSQL server-side cursor.
    try:
        while rows := result.fetchmany(chunk):
            yield from rows  # type: ignore[misc]
    finally:
        result.close()


def batch_attempts(conn: Connection, batch_id: int) -> list[Any]:
    """Every attempt of a batch with its item: what harvest joins result lines against."""
    return list(
        conn.execute(
            select(
                ATTEMPTS.c.id.label("attempt_id"),
                ATTEMPTS.c.outcome,
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
            )
            .join(ITEMS, ITEMS.c.id == ATTEMPTS.c.item_id)
            .where(ATTEMPTS.c.batch_id == batch_id, ATTEMPTS.c.duplicate == 0)
        )
    )


def insert_duplicates(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Billed duplicate lines (attempt rows with `duplicate` >= 1), each once: a replayed
    harvest inserts the same (item, batch, duplicate) again, which does nothing."""
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
    # those runs through ix_items_run_state instead of looking the keys up in (run_id, key).
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


def fail_items_for_good(
    conn: Connection, run_id: str, reasons: Sequence[tuple[str, str]], from_: str, now: datetime
) -> int:
    """Items of the run (by key) in state `from_` fail for good with their reasons, before
    anything was sent for them: no attempt, no cost (an item just recorded as failed, or a
    queued one). Guarded; returns how many moved."""
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
        conn.execute(
            update(ITEMS)
            .where(ITEMS.c.id == bindparam("iid"), ITEMS.c.state == from_)
            .values(state="failed", final=True, error=bindparam("err"), finished_at=now),
            params,
        )
        conn.execute(
            insert(EVENTS),
            [
                {
                    "at": now,
                    "run_id": run_id,
                    "batch_id": None,
                    "item_id": p["iid"],
                    "from_state": None if from_ == "failed" else from_,
                    "to_state": "failed",
                    "detail": p["err"][:500],
                }
                for p in params
            ],
        )
        moved += len(params)
    return moved


def requeue_items(conn: Connection, run_id: str, *, include_final: bool, now: datetime) -> int:
    """`retry`: failed (and with include_final, failed for good) items back to queued."""
    cond = [ITEMS.c.run_id == run_id, ITEMS.c.state.in_(["failed", "cancelled"])]
    if not include_final:
        cond.append(or_(ITEMS.c.final.is_(False), ITEMS.c.state == "cancelled"))
    ids = [r[0] for r in conn.execute(select(ITEMS.c.id).where(*cond))]
    for chunk in _chunks(ids, 500):
        conn.execute(
            update(ITEMS)
            .where(ITEMS.c.id.in_(chunk), ITEMS.c.state.in_(["failed", "cancelled"]))
            .values(state="queued", final=False, error=None, batch_id=None, tries=0)
        )
        item_events(conn, run_id, chunk, "failed", "queued", "retry requested", now)
    return len(ids)


def cancel_open_items(conn: Connection, run_id: str, now: datetime) -> int:
    """Queued items of a cancelled run become cancelled (in-batch ones wait for the batch)."""
    ids = [
        r[0]
        for r in conn.execute(
            select(ITEMS.c.id).where(ITEMS.c.run_id == run_id, ITEMS.c.state == "queued")
        )
    ]
    for chunk in _chunks(ids, 500):
        conn.execute(
            update(ITEMS)
            .where(ITEMS.c.id.in_(chunk), ITEMS.c.state == "queued")
            .values(state="cancelled", error="run cancelled", finished_at=now)
        )
        item_events(conn, run_id, chunk, "queued", "cancelled", "run cancelled", now)
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
) -> None:
    rows = [
        {
            "at": now,
            "run_id": run_id,
            "batch_id": batch_id,
            "item_id": i,
            "from_state": from_,
            "to_state": to,
            "detail": detail,
        }
        for i in item_ids
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


# ── batches ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class OpenedBatch:
    id: int
    seq: int
    display_name: str


def open_batch(conn: Connection, run_id: str, model: str, now: datetime) -> OpenedBatch:
    """A new, empty queued batch of the run (next seq); `close_batch` fills in its totals."""
    seq = (
        conn.execute(
            select(func.coalesce(func.max(BATCHES.c.seq), 0)).where(BATCHES.c.run_id == run_id)
        ).scalar_one()
        + 1
    )
    display_name = f"nb-{run_id}-{seq:05d}"
    batch_id = cast(
        int,
        conn.execute(
            insert(BATCHES)
            .values(
                run_id=run_id,
                seq=seq,
                model=model,
                display_name=display_name,
                state=BatchState.QUEUED.value,
                item_count=0,
                est_tokens=0,
                est_nanos=0,
                create_tries=0,
                created_at=now,
            )
            .returning(BATCHES.c.id)
        ).scalar_one(),
    )
    return OpenedBatch(batch_id, seq, display_name)


def close_batch(
    conn: Connection,
    run_id: str,
    batch_id: int,
    model: str,
    item_count: int,
    est_tokens: int,
    est_nanos: int,
    now: datetime,
    shard_sha256: str | None = None,
) -> None:
    """The batch's totals (and its written file's sha256), and an attempt row for each of
    its items. Both callers have just put those items in it (state `in_batch`), so the
    attempts are read off the batch index alone: no item row or batch row is read per item."""
    conn.execute(
        update(BATCHES)
        .where(BATCHES.c.id == batch_id)
        .values(
            item_count=item_count,
            est_tokens=est_tokens,
            est_nanos=est_nanos,
            shard_sha256=shard_sha256,
        )
    )
    conn.execute(
        insert(ATTEMPTS).from_select(
            ["item_id", "batch_id", "model"],
            select(ITEMS.c.id, literal(batch_id, Integer), literal(model, String)).where(
                ITEMS.c.batch_id == batch_id
            ),
        )
    )
    _event(conn, run_id, batch_id, None, None, "queued", f"{item_count} items", now)


def create_batch(
    conn: Connection,
    run: RunRow,
    model: str,
    items: Sequence[Any],
    est_tokens: int,
    est_nanos: int,
    now: datetime,
) -> int:
    """A queued batch of these queued items: batch row, attempt rows, items in_batch."""
    batch_id = open_batch(conn, run.id, model, now).id
    # `items` are consecutive queued items of this run and model in id order, so one ranged,
    # guarded UPDATE moves exactly them; any other count means another writer got in between
    # and the transaction is rolled back.
    lo, hi = items[0].id, items[-1].id
    moved = conn.execute(
        update(ITEMS)
        .where(
            ITEMS.c.run_id == run.id,
            ITEMS.c.id.between(lo, hi),
            ITEMS.c.state == "queued",
            ITEMS.c.model == model,
        )
        .values(state="in_batch", batch_id=batch_id)
    ).rowcount
    if moved != len(items):
        raise StaleTransition(f"items of run {run.id} were taken by another tick")
    close_batch(conn, run.id, batch_id, model, len(items), est_tokens, est_nanos, now)
    return batch_id


def get_batch(conn: Connection, batch_id: int) -> BatchRow:
    return _batch(conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).one())


def batch_states_by_display(conn: Connection, names: Sequence[str]) -> dict[str, str]:
    """display name -> state of the batches with these display names."""
    rows = conn.execute(
        select(BATCHES.c.display_name, BATCHES.c.state).where(
            BATCHES.c.display_name.in_(list(names))
        )
    )
    return {name: state for name, state in rows}


def batches_of_run(conn: Connection, run_id: str) -> list[BatchRow]:
    query = select(BATCHES).where(BATCHES.c.run_id == run_id).order_by(BATCHES.c.seq)
    return [_batch(r) for r in conn.execute(query)]


def batches_in(
    conn: Connection, states: Iterable[str], run_id: str | None = None
) -> list[BatchRow]:
    query = select(BATCHES).where(BATCHES.c.state.in_(list(states))).order_by(BATCHES.c.id)
    if run_id is not None:
        query = query.where(BATCHES.c.run_id == run_id)
    return [_batch(r) for r in conn.execute(query)]


def batch_state_counts(conn: Connection, run_id: str) -> dict[str, int]:
    rows = conn.execute(
        select(BATCHES.c.state, func.count())
        .where(BATCHES.c.run_id == run_id)
        .group_by(BATCHES.c.state)
    )
    return {state: n for state, n in rows}


def live_tokens(conn: Connection, model: str) -> int:
    """Estimated enqueued tokens of the model's live batches on the Developer API (all runs;
    Vertex AI batch prediction has no enqueued-token quota, so its batches do not count)."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(BATCHES.c.est_tokens), 0))
            .select_from(BATCHES.join(RUNS, RUNS.c.id == BATCHES.c.run_id))
            .where(
                BATCHES.c.model == model,
                BATCHES.c.state.in_([s.value for s in LIVE_BATCH_STATES]),
                RUNS.c.channel.is_(None),
            )
        ).scalar_one()
    )


def live_batch_count(conn: Connection, vertex: bool = False) -> int:
    """Live batches on the Developer API, or (vertex=True) on Vertex AI: each service has
    its own limit."""
    on_channel = RUNS.c.channel.is_not(None) if vertex else RUNS.c.channel.is_(None)
    return conn.execute(
        select(func.count())
        .select_from(BATCHES.join(RUNS, RUNS.c.id == BATCHES.c.run_id))
        .where(BATCHES.c.state.in_([s.value for s in LIVE_BATCH_STATES]), on_channel)
    ).scalar_one()


def transition_batch(
    conn: Connection,
    batch_id: int,
    from_: BatchState,
    to: BatchState,
    now: datetime,
    detail: str | None = None,
    **values: Any,
) -> None:
    """The one way a batch changes state: a guarded update plus its event row."""
    check_batch_transition(from_, to)
    result = conn.execute(
        update(BATCHES)
        .where(BATCHES.c.id == batch_id, BATCHES.c.state == from_.value)
        .values(state=to.value, **values)
    )
    if result.rowcount != 1:
        actual = conn.execute(
            select(BATCHES.c.state).where(BATCHES.c.id == batch_id)
        ).scalar_one_or_none()
        raise StaleTransition(
            f"batch {batch_id} is {actual}, expected {from_.value}; another tick moved it"
        )
    run_id = conn.execute(select(BATCHES.c.run_id).where(BATCHES.c.id == batch_id)).scalar_one()
    _event(conn, run_id, batch_id, None, from_.value, to.value, detail, now)


def update_batch(conn: Connection, batch_id: int, **values: Any) -> None:
    """Non-state fields (file name, remote state, backoff): no event."""
    conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(**values))


UNFINISHED_BATCH_STATES: Final = tuple(
    s.value for s in (BatchState.QUEUED, BatchState.SUBMITTING, BatchState.RUNNING)
)
"""Batches whose attempts carry no cost yet: harvest records costs, holding a `done` batch."""


def run_spend(conn: Connection, run_id: str) -> tuple[int, int]:
    """(spent, reserved) nano-dollars: recorded costs, and estimates of live unharvested batches.

    Costs are summed through the run's batches the service has finished: a run of a million
    items just recorded, or waiting for quota, reads none of its attempts (the sum over all
    of them took about a second there, and every submission pass reads it)."""
    spent = conn.execute(
        select(func.coalesce(func.sum(ATTEMPTS.c.cost_nanos), 0))
        .select_from(BATCHES.join(ATTEMPTS, ATTEMPTS.c.batch_id == BATCHES.c.id))
        .where(BATCHES.c.run_id == run_id, BATCHES.c.state.not_in(UNFINISHED_BATCH_STATES))
    ).scalar_one()
    reserved = conn.execute(
        select(func.coalesce(func.sum(BATCHES.c.est_nanos), 0)).where(
            BATCHES.c.run_id == run_id,
            BATCHES.c.state.in_(["submitting", "running", "done"]),
        )
    ).scalar_one()
    return int(spent), int(reserved)


def day_spend(conn: Connection, day_start: datetime) -> tuple[int, int]:
    """(spent, reserved) across all runs since `day_start` (the daily cap)."""
    spent = conn.execute(
        select(func.coalesce(func.sum(ATTEMPTS.c.cost_nanos), 0)).where(
            ATTEMPTS.c.recorded_at >= day_start
        )
    ).scalar_one()
    reserved = conn.execute(
        select(func.coalesce(func.sum(BATCHES.c.est_nanos), 0)).where(
            BATCHES.c.state.in_(["submitting", "running", "done"]),
        )
    ).scalar_one()
    return int(spent), int(reserved)


# ── leases ───────────────────────────────────────────────────────────────────


def acquire_lease(engine: Engine, name: str, owner: str, now: datetime, ttl: float) -> bool:
    """Take (or renew) a named lease; False when someone else holds an unexpired one."""
    until = now + timedelta(seconds=ttl)
    with engine.begin() as conn:
        taken = conn.execute(
            update(LEASES)
            .where(
                LEASES.c.name == name,
                or_(LEASES.c.owner == owner, LEASES.c.expires_at < now),
            )
            .values(owner=owner, expires_at=until)
        ).rowcount
    if taken == 1:
        return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(LEASES).values(name=name, owner=owner, expires_at=until))
    except IntegrityError:
        return False
    return True


def release_lease(engine: Engine, name: str, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(LEASES.delete().where(LEASES.c.name == name, LEASES.c.owner == owner))


def claim_batch(engine: Engine, batch_id: int, owner: str, now: datetime, ttl: float) -> bool:
    """A per-batch lease so two ticks never harvest or submit the same batch at once."""
    with engine.begin() as conn:
        result = conn.execute(
            update(BATCHES)
            .where(
                BATCHES.c.id == batch_id,
                or_(
                    BATCHES.c.lease_owner.is_(None),
                    BATCHES.c.lease_owner == owner,
                    BATCHES.c.lease_until < now,
                ),
            )
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=ttl))
        )
    return result.rowcount == 1


@contextmanager
def holding_batch(
    engine: Engine, batch_id: int, owner: str, now: datetime, ttl: float, states: Sequence[str]
) -> Iterator[BatchRow | None]:
    """The batch as it is once `owner` holds its lease, or None when another holds it or it
    has left `states` meanwhile (another tick got there first); the lease is released after."""
    if not claim_batch(engine, batch_id, owner, now, ttl):
        yield None
        return
    try:
        with engine.connect() as conn:
            batch = get_batch(conn, batch_id)
        yield batch if batch.state in states else None
    finally:
        release_batch(engine, batch_id, owner)


def release_batch(engine: Engine, batch_id: int, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(BATCHES)
            .where(BATCHES.c.id == batch_id, BATCHES.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


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


def _item_sums_query() -> Any:
    """Items joined with the sums over their counted attempts, grouped per item, by id."""
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
    return (
        select(ITEMS, *(s.label(f"sum_{i}") for i, s in enumerate(sums)))
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


# ── helpers ──────────────────────────────────────────────────────────────────


def _event(
    conn: Connection,
    run_id: str,
    batch_id: int | None,
    item_id: int | None,
    from_: str | None,
    to: str,
    detail: str | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(EVENTS).values(
            at=now,
            run_id=run_id,
            batch_id=batch_id,
            item_id=item_id,
            from_state=from_,
            to_state=to,
            detail=detail,
        )
    )


def _chunks(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


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
    moved = conn.execute(
        update(ITEMS)
        .where(ITEMS.c.id == item_id, ITEMS.c.state == "queued")
        .values(
            state="succeeded",
            cached=True,
            uri=uri,
            sha256=sha256,
            error=None,
            finished_at=now,
            model=model,
        )
    ).rowcount
    if moved != 1:
        return False
    _event(conn, run_id, None, item_id, "queued", "succeeded", detail[:500], now)
    return True


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
    """(outcome, reason, count) of recorded attempts, grouped (the error classes' source)."""
    query = select(ATTEMPTS.c.outcome, ATTEMPTS.c.reason, func.count().label("n")).where(
        ATTEMPTS.c.outcome.is_not(None), ATTEMPTS.c.duplicate == 0
    )
    if run_id is not None:
        query = query.join(ITEMS, ITEMS.c.id == ATTEMPTS.c.item_id).where(ITEMS.c.run_id == run_id)
    yield from conn.execute(query.group_by(ATTEMPTS.c.outcome, ATTEMPTS.c.reason))


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
