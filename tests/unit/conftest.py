"""Fixtures of the quick tests: `ledger`, a `Ledger` on a fresh in-memory SQLite ledger
with one active run (`test_ledger_transitions.RUN`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.adapters.ledger.models import Base
from tests.unit.test_ledger_transitions import _run_values


@pytest.fixture
def ledger() -> Iterator[Ledger]:
    """A fresh in-memory ledger at the models' schema, with one active run."""
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        repo.insert_run(conn, _run_values())
    led = Ledger.on(engine)
    yield led
    led.dispose()
