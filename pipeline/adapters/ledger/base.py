"""The engine a `Ledger` owns and the two ways its methods reach it: `_read()` (a connection,
nothing written) and `_write()` (one transaction, committed when the block ends, rolled back
when it raises). Every `Ledger` method is one of these blocks around the topic functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine


class LedgerBase:
    """Owns the engine; the `Ledger`'s topic mixins open their transactions through it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The engine itself: for tests' and benchmarks' setup and checks only (the shell
        reads and changes the ledger through `Ledger` methods)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn
