"""Leases: the scheduler lease and per-batch claims (a dead holder delays others by at most its
TTL).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import (
    Engine,
    insert,
    or_,
    update,
)
from sqlalchemy.exc import IntegrityError

from pipeline.adapters.ledger.batches import get_batch
from pipeline.adapters.ledger.rows import BATCHES, LEASES, BatchRow

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
