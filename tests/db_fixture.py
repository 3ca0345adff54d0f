"""Database fixtures, loaded as a pytest plugin (`pytest_plugins` in tests/conftest.py).

`pg_url` gives a fresh PostgreSQL database per test on the server at 127.0.0.1:5432, already
migrated: it is cloned (`CREATE DATABASE ... TEMPLATE`) from one template database that the
session migrates once, which is several times faster than migrating per test. It is dropped
afterwards; without a server the test is skipped (failed when CI=true). `empty_pg_url` gives an
empty one, for the tests of migrating itself. `sqlite_url` gives a file (not yet created) in
tmp_path. `db_url` runs a test once on each backend; `empty_db_url` likewise with empty databases.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def _database(template: str | None = None) -> Iterator[str]:
    """A new database (a copy of `template` when given), dropped (WITH (FORCE)) afterwards."""
    name = f"nb_{secrets.token_hex(6)}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with _admin_connection() as admin:
        admin.execute(create)
    try:
        yield name
    finally:
        with _admin_connection() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    """A database migrated to head once per session; no connection is left open on it, as
    `CREATE DATABASE ... TEMPLATE` requires."""
    from pipeline.adapters.ledger import db

    with _database() as name:
        engine = db.make_engine(PG_URL_TEMPLATE.format(name=name))
        db.ensure_schema(engine)
        engine.dispose()
        yield name


@pytest.fixture
def pg_url(_pg_template: str) -> Iterator[str]:
    """The URL of a new PostgreSQL database already migrated to head."""
    with _database(_pg_template) as name:
        yield PG_URL_TEMPLATE.format(name=name)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database."""
    with _database() as name:
        yield PG_URL_TEMPLATE.format(name=name)


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


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def empty_db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database URL on each backend: for the tests of migrating itself."""
    name = "sqlite_url" if request.param == "sqlite" else "empty_pg_url"
    return str(request.getfixturevalue(name))
