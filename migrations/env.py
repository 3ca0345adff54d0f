"""Alembic environment of the ledger, run by `pipeline.adapters.ledger.db` (no alembic.ini).

The target is `pipeline.adapters.ledger.models.Base.metadata`. When the caller puts a connection in
`config.attributes["connection"]`, migrations run on it, inside the caller's transaction and
lock; otherwise an engine is built from the `sqlalchemy.url` option, NANOBATCH_DATABASE_URL or
the default SQLite file. Tables go in the connection's default schema.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from pipeline.adapters.ledger.db import DEFAULT_URL, make_engine, normalize_url
from pipeline.adapters.ledger.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("NANOBATCH_DATABASE_URL")
    return normalize_url(url or DEFAULT_URL)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`--sql`) without a database."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given: Connection | None = config.attributes.get("connection")
    if given is not None:
        _configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
