"""Shared fixtures: databases (SQLite and PostgreSQL), the GCS emulator, and isolation of
every test from the real environment (no key, no ledger, no state folder of the user's)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator

import pytest
import structlog
from sqlalchemy import Engine, event

pytest_plugins = ["tests.db_fixture", "tests.gcs_fixture"]


@pytest.fixture(autouse=True)
def _isolated_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test sees the developer's keys, database or emulator settings."""
    for name in (
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "NANOBATCH_DATABASE_URL",
        "NANOBATCH_LOG_FORMAT",
        "NANOBATCH_DAILY_BUDGET_USD",
        "NANOBATCH_NOTIFY_URL",
        "NANOBATCH_WEBHOOK_SECRET",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_VERTEX_BASE_URL",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "STORAGE_EMULATOR_HOST",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """`main()` binds structlog to the stderr of its test; unbind it afterwards."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@event.listens_for(Engine, "engine_connect")
def _track_engine(connection: object) -> None:
    _ENGINES.add(connection.engine)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    """Close the pooled connections of every engine a test used, when the test ends.

    Tests build contexts (and so engines) freely; left to the garbage collector, their pooled
    connections would close at a random later moment, and with warnings as errors that
    ResourceWarning would fail whichever test happened to be running then.
    """
    yield
    for engine in list(_ENGINES):
        engine.dispose()
    _ENGINES.clear()
