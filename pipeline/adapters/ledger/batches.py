"""Batches: opening and closing them as items are packed, their guarded state changes, quota
and spend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Connection, func, insert, select, update

from pipeline.adapters.ledger.items import transition_items
from pipeline.adapters.ledger.rows import (
    ATTEMPTS,
    BATCHES,
    ITEMS,
    RUNS,
    BatchRow,
    RunRow,
    _batch,
    _event,
)
from pipeline.core.errors import InvalidTransition, StaleTransition
from pipeline.core.states import (
    LIVE_BATCH_STATES,
    RESERVING_BATCH_STATES,
    BatchState,
    ItemState,
    check_batch_transition,
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
    """The batch's totals (and its written file's sha256) and its `queued` event. Both
    callers have just put its items in it (state `in_batch`, `batch_id`); no attempt row is
    written now: each is written once, with its outcome (`outcomes.record_outcomes`)."""
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
    """A queued batch of these queued items: batch row, items in_batch."""
    batch_id = open_batch(conn, run.id, model, now).id
    # `items` are consecutive queued items of this run and model in id order, so one ranged,
    # guarded UPDATE moves exactly them; any other count means another writer got in between
    # and the transaction is rolled back.
    lo, hi = items[0].id, items[-1].id
    moved = transition_items(
        conn,
        run.id,
        [item.id for item in items],
        ItemState.QUEUED,
        ItemState.IN_BATCH,
        now,
        where=[ITEMS.c.run_id == run.id, ITEMS.c.id.between(lo, hi), ITEMS.c.model == model],
        values={"batch_id": batch_id},
        events=False,  # the batch's `queued` event counts them
    )
    if moved != len(items):
        raise StaleTransition(
            f"items {lo}..{hi} of run {run.id}: {moved} of {len(items)} were still queued, "
            "another tick took the others"
        )
    close_batch(conn, run.id, batch_id, model, len(items), est_tokens, est_nanos, now)
    return batch_id


def get_batch(conn: Connection, batch_id: int) -> BatchRow:
    return _batch(conn.execute(select(BATCHES).where(BATCHES.c.id == batch_id)).one())


def batch_by_remote_name(conn: Connection, remote_name: str) -> BatchRow | None:
    """The batch the service calls `remote_name` (a webhook names it), or None."""
    row = conn.execute(select(BATCHES).where(BATCHES.c.remote_name == remote_name)).first()
    return _batch(row) if row else None


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
    try:
        check_batch_transition(from_, to)
    except InvalidTransition as exc:
        raise InvalidTransition(f"batch {batch_id}: {exc}") from None
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
            BATCHES.c.state.in_(RESERVING_BATCH_STATES),
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
            BATCHES.c.state.in_(RESERVING_BATCH_STATES),
        )
    ).scalar_one()
    return int(spent), int(reserved)
