"""Engine, URL and session helpers of the ledger (`pipeline.adapters.ledger.db`)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from pipeline.adapters.ledger import db
from pipeline.adapters.ledger.models import Lease
from pipeline.core.errors import RuntimeFailure

SECRET = "s3cr3t-pa55"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ("postgresql://u@h:5433/d", "postgresql+psycopg://u@h:5433/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:///.nanobatch/ledger.db", "sqlite:///.nanobatch/ledger.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert db.normalize_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://nb:{SECRET}@db.example:5432/ledger",
        f"postgres://nb:{SECRET}@db.example/ledger?sslmode=require",
        f"postgresql+psycopg://nb:{SECRET}@db.example/ledger",
    ],
)
def test_mask_url_hides_the_password(url: str) -> None:
    masked = db.mask_url(url)
    assert SECRET not in masked
    assert "nb:***@db.example" in masked


def test_mask_url_keeps_urls_without_password() -> None:
    assert db.mask_url("sqlite:///x.db") == "sqlite:///x.db"
    assert db.mask_url("postgresql://nb@h/d") == "postgresql://nb@h/d"


def test_unreachable_database_masks_the_password() -> None:
    # Port 9 (discard) on localhost: nothing listens, the connection is refused at once.
    engine = db.make_engine(f"postgresql://nb:{SECRET}@127.0.0.1:9/ledger")
    with pytest.raises(RuntimeFailure) as raised:
        db.ensure_schema(engine)
    message = str(raised.value)
    assert SECRET not in message
    assert "postgresql+psycopg://nb:***@127.0.0.1:9/ledger" in message
    assert "NANOBATCH_DATABASE_URL" in message


def test_make_engine_creates_the_sqlite_folder(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/a/b/ledger.db")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 60000
        assert (tmp_path / "a" / "b" / "ledger.db").exists()
    finally:
        engine.dispose()


def test_in_memory_sqlite_migrates_without_a_lock_file(tmp_path: Path) -> None:
    engine = db.make_engine("sqlite://")
    db.ensure_schema(engine)
    assert db.current_revision(engine) == db.HEAD_REVISION


def test_session_scope_commits_or_rolls_back(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        db.ensure_schema(engine)
        with pytest.raises(ZeroDivisionError), db.session_scope(engine) as session:
            session.add(Lease(name="tick", owner="a", expires_at=_now()))
            session.flush()
            _ = 1 / 0
        with db.session_scope(engine) as session:
            assert session.get(Lease, "tick") is None
            session.add(Lease(name="tick", owner="b", expires_at=_now()))
        with db.session_scope(engine) as session:
            lease = session.get(Lease, "tick")
            assert lease is not None
            assert lease.owner == "b"
    finally:
        engine.dispose()


def _now() -> datetime:

    return datetime.now(UTC)
