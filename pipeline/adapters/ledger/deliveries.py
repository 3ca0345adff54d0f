"""The `deliveries` table: webhook deliveries `listen` accepted, each recorded once by its
key (an insert that does nothing when the key is taken, so a repeat is told apart without
an error), then marked done or ignored. Also the reads the metrics and `listen` need: the
dynamic webhook URLs runs were recorded with, and each harvested batch's end-to-stored time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pipeline.adapters.ledger.models import Batch, Delivery, Run

DELIVERIES = cast(Table, Delivery.__table__)
BATCHES = cast(Table, Batch.__table__)
RUNS = cast(Table, Run.__table__)


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    key: str
    scheme: str
    event: str
    batch_name: str | None
    batch_id: int | None
    state: str
    detail: str | None
    received_at: datetime
    done_at: datetime | None


def _row(row: Any) -> DeliveryRow:
    return DeliveryRow(**{f: getattr(row, f) for f in DeliveryRow.__dataclass_fields__})


def record(
    engine: Engine,
    *,
    key: str,
    scheme: str,
    event: str,
    batch_name: str | None,
    state: str,
    now: datetime,
    detail: str | None = None,
    batch_id: int | None = None,
) -> bool:
    """Record a delivery in its own transaction; False when its key is recorded already
    (INSERT ... ON CONFLICT DO NOTHING: concurrent receivers never both record one key)."""
    values = {
        "key": key[:200],
        "scheme": scheme,
        "event": event[:100],
        "batch_name": batch_name[:300] if batch_name else None,
        "batch_id": batch_id,
        "state": state,
        "detail": detail,
        "received_at": now,
    }
    with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(DELIVERIES)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(DELIVERIES.c.id)
        )
        # A row comes back only when it was inserted (rowcount is -1 under RETURNING).
        return conn.execute(statement).first() is not None


def pending(conn: Connection, limit: int) -> list[DeliveryRow]:
    """Queued deliveries (accepted, their batch not yet moved on), oldest first."""
    query = (
        select(DELIVERIES)
        .where(DELIVERIES.c.state == "queued")
        .order_by(DELIVERIES.c.received_at, DELIVERIES.c.id)
        .limit(limit)
    )
    return [_row(r) for r in conn.execute(query)]


def finish(
    conn: Connection,
    batch_name: str,
    batch_id: int | None,
    state: str,
    detail: str | None,
    now: datetime,
) -> int:
    """Every queued delivery naming `batch_name` becomes `state` (done or ignored)."""
    result = conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.batch_name == batch_name, DELIVERIES.c.state == "queued")
        .values(
            state=state, batch_id=batch_id, detail=detail[:500] if detail else None, done_at=now
        )
    )
    return int(result.rowcount)


def counts(conn: Connection) -> list[tuple[str, str, int]]:
    """(event, state, count) of every recorded delivery."""
    from sqlalchemy import func

    rows = conn.execute(
        select(DELIVERIES.c.event, DELIVERIES.c.state, func.count()).group_by(
            DELIVERIES.c.event, DELIVERIES.c.state
        )
    )
    return [(str(e), str(s), int(n)) for e, s, n in rows]


def webhook_urls(conn: Connection) -> set[str]:
    """The dynamic webhook URLs runs were recorded with (a JWT's `aud` must be one of them)."""
    rows = conn.execute(
        select(RUNS.c.webhook_url).where(RUNS.c.webhook_url.is_not(None)).distinct()
    )
    return {str(r[0]) for r in rows}


def stored_times(conn: Connection, since: datetime) -> Iterator[Any]:
    """(ended_at, finished_at, harvested_at, via_webhook) of batches harvested since `since`:
    via_webhook when a delivery naming the batch was recorded before it was harvested."""
    hinted = exists().where(
        and_(
            DELIVERIES.c.batch_name == BATCHES.c.remote_name,
            DELIVERIES.c.received_at <= BATCHES.c.harvested_at,
        )
    )
    yield from conn.execute(
        select(
            BATCHES.c.ended_at,
            BATCHES.c.finished_at,
            BATCHES.c.harvested_at,
            hinted.label("via_webhook"),
        ).where(BATCHES.c.harvested_at.is_not(None), BATCHES.c.harvested_at >= since)
    )
