"""Outcomes: each attempt's row written once, when its result (tokens, cost, reason) is
known, and its item moved out of the batch, in one transaction; and the items of a batch the
service refused.

While an item is in flight it carries its batch (`items.batch_id`, state `in_batch`) and has
no attempt row there. The attempt is inserted under UNIQUE(item_id, batch_id, duplicate),
a conflict doing nothing, and the item moves by `state = 'in_batch' AND batch_id = :batch`,
so a replay after a kill changes nothing and never counts a cost twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam

from pipeline.adapters.ledger.items import (
    attempt_row,
    insert_attempts,
    open_batch_items,
    transition_items,
)
from pipeline.adapters.ledger.rows import ITEMS
from pipeline.core.reasons import ReasonCode
from pipeline.core.states import ItemState
from pipeline.core.values import Usage


@dataclass(frozen=True)
class AttemptOutcome:
    """One attempt's recorded result and what its item becomes (decided by the policy)."""

    item_id: int
    outcome: str
    """succeeded, retry, final or cancelled: the attempt's outcome column."""
    reason: str | None
    usage: Usage
    cost_nanos: int
    standard_nanos: int
    state: ItemState
    """The item's next state: succeeded, queued (retried), failed or cancelled."""
    final: bool = False
    model: str = ""
    """The model of the item's next try (its fallback, or the batch's)."""
    fallback: bool = False
    uri: str | None = None
    sha256: str | None = None
    tried: bool = True
    """Whether this attempt counts as a try (a cancelled one does not)."""
    error: str | None = None
    """The item's error when it says more than the attempt's reason (None: the reason)."""
    code: ReasonCode | None = None
    """The reason's code (None for a success)."""
    status: int | None = None
    """The gRPC/HTTP number of a per-line error."""
    error_code: ReasonCode | None = None
    """The code of `error`, when it is set (None: the reason's code)."""


@dataclass(frozen=True)
class BilledDuplicate:
    """A results line that lost to another line of its key but carries usage (the service
    billed it): recorded beside the item's attempt, not a try."""

    item_id: int
    duplicate: int
    """n >= 1: the item's nth billed duplicate line in the batch."""
    reason: str | None
    code: ReasonCode | None
    usage: Usage
    cost_nanos: int
    standard_nanos: int


def record_outcomes(
    conn: Connection,
    run_id: str,
    batch_id: int,
    outcomes: Sequence[AttemptOutcome],
    now: datetime,
    *,
    model: str,
) -> None:
    """Insert the attempts (of the batch's `model`) and move their items out of the batch,
    guarded so a replay changes nothing. Items move in groups by next state, each through
    `transition_items`."""
    if not outcomes:
        return
    insert_attempts(conn, [attempt_values(o, batch_id, model, now) for o in outcomes])
    groups: dict[ItemState, list[AttemptOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.state, []).append(o)
    for state, group in groups.items():
        _move_out_of_batch(conn, run_id, batch_id, state, group, now, None)


def refuse_batch_items(
    conn: Connection,
    run_id: str,
    batch_id: int,
    model: str,
    reason: str,
    now: datetime,
    code: ReasonCode = ReasonCode.CREATE_REFUSED,
) -> int:
    """A batch the service refused to create: its items still in it get a `not_sent`
    attempt and fail for good, no try counted. Returns how many items failed."""
    group = [
        AttemptOutcome(
            r.item_id,
            "not_sent",
            reason,
            Usage(),
            0,
            0,
            ItemState.FAILED,
            final=True,
            model=model,
            tried=False,
            code=code,
        )
        for r in open_batch_items(conn, batch_id)
    ]
    if group:
        insert_attempts(conn, [attempt_values(o, batch_id, model, now) for o in group])
        _move_out_of_batch(conn, run_id, batch_id, ItemState.FAILED, group, now, reason)
    return len(group)


def attempt_values(o: AttemptOutcome, batch_id: int, model: str, now: datetime) -> dict[str, Any]:
    """The attempt row of an outcome in a batch of `model` (the try itself: duplicate 0)."""
    return attempt_row(
        o.item_id,
        batch_id,
        model,
        o.outcome,
        now,
        reason=o.reason,
        code=o.code,
        status=o.status,
        usage=o.usage,
        cost_nanos=o.cost_nanos,
        standard_nanos=o.standard_nanos,
    )


def record_duplicates(
    conn: Connection,
    batch_id: int,
    model: str,
    duplicates: Sequence[BilledDuplicate],
    now: datetime,
) -> None:
    """Billed duplicate lines, each inserted once beside its item's attempt (outcome
    `duplicate`): their cost counts, they are not tries and move no item."""
    rows = [
        attempt_row(
            d.item_id,
            batch_id,
            model,
            "duplicate",
            now,
            reason=d.reason,
            code=d.code,
            usage=d.usage,
            cost_nanos=d.cost_nanos,
            standard_nanos=d.standard_nanos,
            duplicate=d.duplicate,
        )
        for d in duplicates
    ]
    insert_attempts(conn, rows)


def _move_out_of_batch(
    conn: Connection,
    run_id: str,
    batch_id: int,
    state: ItemState,
    group: Sequence[AttemptOutcome],
    now: datetime,
    detail: str | None,
) -> None:
    """Items of one next state leave the batch: one executemany through the checked move."""
    tries = ITEMS.c.tries + bindparam("count")
    values: dict[str, Any]
    if state == ItemState.SUCCEEDED:
        values = {
            "uri": bindparam("uri"),
            "sha256": bindparam("sha"),
            "error": None,
            "reason_code": None,
            "tries": tries,
            "finished_at": bindparam("now"),
        }
    elif state == ItemState.QUEUED:
        values = {
            "batch_id": None,
            "error": bindparam("err"),
            "reason_code": bindparam("code"),
            "tries": tries,
            "model": bindparam("model"),
            "fallback_used": ITEMS.c.fallback_used | bindparam("fb"),
        }
    else:
        values = {
            "error": bindparam("err"),
            "reason_code": bindparam("code"),
            "final": bindparam("final"),
            "tries": tries,
            "finished_at": bindparam("now"),
        }
    rows = [
        {
            "iid": o.item_id,
            "uri": o.uri,
            "sha": o.sha256,
            "err": o.error if o.error is not None else o.reason,
            "code": o.error_code if o.error is not None else o.code,
            "final": o.final,
            "model": o.model,
            "fb": o.fallback,
            "now": now,
            "count": 1 if o.tried else 0,
        }
        for o in group
    ]
    transition_items(
        conn,
        run_id,
        [o.item_id for o in group],
        ItemState.IN_BATCH,
        state,
        now,
        values=values,
        rows=rows,
        guard=[ITEMS.c.batch_id == batch_id],
        detail=detail,
        batch_id=batch_id,
    )
