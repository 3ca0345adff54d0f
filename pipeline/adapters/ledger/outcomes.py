"""Outcomes: each attempt's result (tokens, cost, reason) recorded once, and its item moved
out of the batch, in one transaction; and the items of a batch the service refused.

The attempt update is guarded by `outcome IS NULL` and the item moves by `state = 'in_batch'
AND batch_id = :batch`, so a replay after a kill changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, update

from pipeline.adapters.ledger.items import batch_attempts, transition_items
from pipeline.adapters.ledger.rows import ATTEMPTS, ITEMS
from pipeline.core.reasons import ReasonCode
from pipeline.core.states import ItemState
from pipeline.core.values import Usage


@dataclass(frozen=True)
class AttemptOutcome:
    """One attempt's recorded result and what its item becomes (decided by the policy)."""

    attempt_id: int
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


def record_outcomes(
    conn: Connection,
    run_id: str,
    batch_id: int,
    outcomes: Sequence[AttemptOutcome],
    now: datetime,
) -> None:
    """Record attempts and move their items out of the batch, guarded so a replay changes
    nothing. Items move in groups by next state, each through `transition_items`."""
    if not outcomes:
        return
    conn.execute(
        update(ATTEMPTS)
        .where(ATTEMPTS.c.id == bindparam("aid"), ATTEMPTS.c.outcome.is_(None))
        .values(
            outcome=bindparam("outcome"),
            reason=bindparam("reason"),
            reason_code=bindparam("code"),
            reason_status=bindparam("status"),
            input_tokens=bindparam("i"),
            output_image_tokens=bindparam("oi"),
            output_text_tokens=bindparam("ot"),
            thinking_tokens=bindparam("th"),
            cost_nanos=bindparam("cost"),
            standard_nanos=bindparam("std"),
            recorded_at=now,
        ),
        [_attempt_params(o) for o in outcomes],
    )
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
    """A batch the service refused to create: its unrecorded attempts become `not_sent` and
    their items fail for good, no try counted. Returns how many items failed."""
    rows = [r for r in batch_attempts(conn, batch_id) if r.outcome is None]
    conn.execute(
        update(ATTEMPTS)
        .where(ATTEMPTS.c.batch_id == batch_id, ATTEMPTS.c.outcome.is_(None))
        .values(outcome="not_sent", reason=reason, reason_code=code, recorded_at=now)
    )
    group = [
        AttemptOutcome(
            r.attempt_id,
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
        for r in rows
    ]
    if group:
        _move_out_of_batch(conn, run_id, batch_id, ItemState.FAILED, group, now, reason)
    return len(group)


def _attempt_params(o: AttemptOutcome) -> dict[str, Any]:
    u = o.usage
    return {
        "aid": o.attempt_id,
        "outcome": o.outcome,
        "reason": o.reason,
        "code": o.code,
        "status": o.status,
        "i": u.input,
        "oi": u.output_image,
        "ot": u.output_text,
        "th": u.thinking,
        "cost": o.cost_nanos,
        "std": o.standard_nanos,
    }


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
