"""Database fixtures, loaded as a pytest plugin (`pytest_plugins` in tests/conftest.py).

`pg_url` gives a fresh PostgreSQL database per test on the server at 127.0.0.1:5432 and drops
it afterwards; without a server the test is skipped (failed when CI=true). `sqlite_url` gives a
file in tmp_path. `db_url` runs a test once on each backend.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {PG_ADMIN_DSN} is unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped (WITH (FORCE)) after the test."""
    name = f"nb_{secrets.token_hex(6)}"
    with _admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield PG_URL_TEMPLATE.format(name=name)
    finally:
        with _admin_connection() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def sqlite_url(tmp_path: os.PathLike[str]) -> str:
    """The URL of a SQLite file (not yet created) in the test's tmp_path."""
    return f"sqlite:///{os.fspath(tmp_path)}/ledger.db"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL: the test runs once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))
