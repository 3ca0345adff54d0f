"""The `deliveries` table (issue 18): a webhook delivery is recorded once by its key, on
SQLite and PostgreSQL, even when several receivers record the same key at once."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from pipeline.adapters.ledger import db, deliveries

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = db.make_engine(db_url)
    db.ensure_schema(engine)
    yield engine
    engine.dispose()


def _record(engine: Engine, key: str, batch: str = "batches/b1", state: str = "queued") -> bool:
    return deliveries.record(
        engine,
        key=key,
        scheme="hmac",
        event="batch.succeeded",
        batch_name=batch,
        state=state,
        now=NOW,
    )


def test_delivery_recorded_once_by_key(engine: Engine) -> None:
    """The same key twice: the first is recorded, the second is a repeat and changes nothing."""
    assert _record(engine, "id:msg_1") is True
    assert _record(engine, "id:msg_1", batch="batches/other") is False
    with engine.connect() as conn:
        rows = deliveries.pending(conn, 10)
    assert [(r.key, r.batch_name) for r in rows] == [("id:msg_1", "batches/b1")]


def test_same_key_from_many_threads_is_recorded_once(engine: Engine) -> None:
    """Eight receivers recording one delivery at once: exactly one of them records it."""
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _record(engine, "jti:abc"), range(8)))
    assert results.count(True) == 1
    with engine.connect() as conn:
        assert len(deliveries.pending(conn, 10)) == 1


def test_finish_moves_every_queued_delivery_of_the_batch(engine: Engine) -> None:
    """Finishing a batch's deliveries marks all its queued ones, not other batches' or
    ignored ones."""
    _record(engine, "id:a", "batches/b1")
    _record(engine, "id:b", "batches/b1")
    _record(engine, "id:c", "batches/b2")
    _record(engine, "id:d", "batches/b1", state="ignored")
    with engine.begin() as conn:
        moved = deliveries.finish(conn, "batches/b1", 7, "done", "harvested", NOW)
    assert moved == 2
    with engine.connect() as conn:
        assert [r.key for r in deliveries.pending(conn, 10)] == ["id:c"]
        counts = {(e, s): n for e, s, n in deliveries.counts(conn)}
    assert counts == {("batch.succeeded", "done"): 2, ("batch.succeeded", "queued"): 1} | {
        ("batch.succeeded", "ignored"): 1
    }


def test_pending_is_oldest_first_and_limited(engine: Engine) -> None:
    for i in range(5):
        deliveries.record(
            engine,
            key=f"id:{i}",
            scheme="jwt",
            event="batch.failed",
            batch_name=f"batches/{i}",
            state="queued",
            now=NOW + timedelta(seconds=-i),
        )
    with engine.connect() as conn:
        assert [r.key for r in deliveries.pending(conn, 2)] == ["id:4", "id:3"]
