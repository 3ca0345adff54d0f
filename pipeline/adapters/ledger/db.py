"""The ledger's engine, sessions and migrations.

`make_engine` turns a `NANOBATCH_DATABASE_URL` into an engine (SQLite tuned for several
processes, PostgreSQL with pre-ping). `ensure_schema` is what every command calls: it reads
`alembic_version` and returns at once when the database is at `HEAD_REVISION`; otherwise it
runs `alembic upgrade head` under a lock (a PostgreSQL advisory lock, or an flock beside the
SQLite file), so several processes may meet an empty database at once. URLs are shown only
through `mask_url`: a password never reaches a message.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session

import pipeline
from pipeline.adapters.private import PRIVATE_FILE, create_private, make_private_dir
from pipeline.core.errors import RuntimeFailure, UsageError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import URL

DEFAULT_URL: Final = "sqlite:///.nanobatch/ledger.db"
#: The newest revision in `migrations/versions`; a test checks it against the scripts.
HEAD_REVISION: Final = "0013_drop_prefix_indexes"
MIGRATIONS_PACKAGE: Final = "nanobatch_migrations"
"""The migrations as a wheel installs them: a package beside `pipeline` (see pyproject.toml)."""
#: pg_advisory_xact_lock key of the migration lock (the bytes of "nbmigrat" as an int64).
MIGRATION_LOCK_KEY: Final = 0x6E626D6967726174
SQLITE_TIMEOUT_S: Final = 60

_PG_SCHEMES: Final = frozenset({"postgres", "postgresql"})
_PASSWORD_IN_URL: Final = re.compile(r"(://[^:/?#@]*:)[^@/?#]*@")


def normalize_url(url: str) -> str:
    """`postgres://` and `postgresql://` become `postgresql+psycopg://`; others stay as they are."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _PG_SCHEMES:
        return f"postgresql+psycopg://{rest}"
    return url


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, fit to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_URL.sub(r"\1***@", url)


def make_engine(url: str) -> Engine:
    """An engine for `url` (normalized). SQLite gets its folder, WAL and a long busy timeout."""
    parsed = _parse_url(normalize_url(url))
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        return create_engine(parsed, pool_pre_ping=True, connect_args=_pg_connect_args(parsed))
    except ImportError as exc:
        raise _missing_driver(url, exc) from None
    except (ArgumentError, NoSuchModuleError) as exc:
        raise UsageError(
            f"cannot use the ledger database {mask_url(url)}: {type(exc).__name__}. "
            "Set NANOBATCH_DATABASE_URL to a sqlite:/// or postgresql:// URL."
        ) from None


#: pip packages of the DBAPI modules SQLAlchemy's dialects import, where the names differ.
_DRIVER_PACKAGES: Final = {
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "psycopg2": "psycopg2-binary",
    "psycopg": "'psycopg[binary]'",
    "cx_Oracle": "cx_Oracle",
}


def _missing_driver(url: str, exc: ImportError) -> UsageError:
    """A URL whose DBAPI module is not installed: name the module and the package."""
    module = (exc.name or "").partition(".")[0]
    if not module:
        return UsageError(
            f"cannot use the ledger database {mask_url(url)}: {exc}. Install its driver, or "
            "set NANOBATCH_DATABASE_URL to a sqlite:/// or postgresql:// URL."
        )
    package = _DRIVER_PACKAGES.get(module, module)
    return UsageError(
        f"the ledger database {mask_url(url)} needs the Python module '{module}', which is not "
        f"installed: `pip install {package}` into nanobatch's environment, or set "
        "NANOBATCH_DATABASE_URL to a sqlite:/// or postgresql:// URL (the databases nanobatch "
        "is tested on)."
    )


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        raise UsageError(
            f"NANOBATCH_DATABASE_URL {mask_url(url)} is not a database URL; "
            f"use e.g. {DEFAULT_URL} or postgresql://USER:PASSWORD@HOST/DB."
        ) from None


def _pg_connect_args(url: URL) -> dict[str, object]:
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return {"connect_timeout": 10}
    return {}


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        return None if ":memory:" in database else Path(database.removeprefix("file:"))
    return Path(database)


def _sqlite_engine(url: URL) -> Engine:
    path = _sqlite_file(url)
    if path is not None:
        try:
            make_private_dir(path.parent)
            create_private(path)  # SQLite gives its -wal and -shm files the same mode
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot create the ledger database {mask_url(str(url))} in the folder "
                f"{path.parent}: {exc.strerror}. "
                "Fix its permissions or point NANOBATCH_DATABASE_URL elsewhere."
            ) from None
    engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
        _enter_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _enter_wal(cursor: Any) -> None:
    """Switch a database to WAL once. Several processes meeting a new file at once can get
    SQLITE_BUSY here without the busy handler being asked, so this retries for a while."""
    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def _connect(engine: Engine) -> Iterator[Connection]:
    """A connection; an unreachable database becomes a RuntimeFailure naming the masked URL."""
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        raise _unreachable(engine, exc) from None
    with connection:
        yield connection


def _unreachable(engine: Engine, exc: DBAPIError) -> RuntimeFailure:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
    password = engine.url.password
    if password:
        reason = reason.replace(str(password), "***")
    return RuntimeFailure(
        f"cannot reach the ledger database {engine.url.render_as_string(hide_password=True)}: "
        f"{reason}. Check that the database server is running and that "
        "NANOBATCH_DATABASE_URL (host, port, user, password, database) is right."
    )


def _read_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise RuntimeFailure(
            f"the ledger database has several alembic versions {sorted(rows)}; "
            "run `nanobatch db upgrade` with the newest nanobatch or fix alembic_version by hand."
        )
    return rows[0] if rows else None


def current_revision(engine: Engine) -> str | None:
    """The revision in the database's `alembic_version`, or None before the first migration."""
    with _connect(engine) as connection:
        revision = _read_revision(connection)
        connection.rollback()
    return revision


def migrations_dir() -> Path:
    """The Alembic scripts: `migrations/` beside `pipeline/` in a source checkout (editable
    installs, tests), else the `nanobatch_migrations` package of an installed wheel."""
    checkout = Path(pipeline.__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "migrations" / "env.py").is_file():
        return checkout / "migrations"
    spec = importlib.util.find_spec(MIGRATIONS_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "env.py").is_file():
            return Path(location)
    raise RuntimeFailure(
        f"the ledger migrations are missing: no migrations/ beside {checkout / 'pipeline'} and "
        f"no {MIGRATIONS_PACKAGE} package installed. Reinstall nanobatch (pip install .)."
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration built in code (no alembic.ini); migrations run on `connection`."""
    from alembic.config import Config

    # stdout now, not the stream alembic saw when first imported (a test may have swapped it).
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """`alembic upgrade head` under the migration lock; returns at once when already at head."""
    if current_revision(engine) == HEAD_REVISION:
        return
    with _connect(engine) as connection:
        if engine.dialect.name == "postgresql":
            _upgrade_postgres(connection)
        else:
            with _file_lock(_lock_path(engine)):
                _upgrade_locked(connection)


def ensure_schema(engine: Engine) -> None:
    """What every command calls first: bring the ledger to head (cheap when it is there)."""
    upgrade(engine)


def _upgrade_postgres(connection: Connection) -> None:
    """One transaction (PostgreSQL DDL is transactional) that first takes the advisory lock.

    The transaction-level lock is released by the commit or rollback, so a failed migration or
    a pooled connection cannot keep it. A waiter then finds the version row and does nothing.
    """
    with connection.begin():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        _run_upgrade(connection)


def _upgrade_locked(connection: Connection) -> None:
    with connection.begin():
        _run_upgrade(connection)


def _run_upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

    try:
        command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:
        raise RuntimeFailure(
            f"cannot migrate the ledger database to {HEAD_REVISION}: {exc}. "
            "If another nanobatch version wrote it, run that version or a newer one."
        ) from None


def _lock_path(engine: Engine) -> Path | None:
    path = _sqlite_file(engine.url)
    return None if path is None else path.with_name(path.name + ".migrate.lock")


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive flock on `path` (nothing when None: an in-memory database)."""
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    with Session(engine) as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()
