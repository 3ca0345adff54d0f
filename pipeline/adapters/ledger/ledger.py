"""`Ledger`: the one object the shell holds to read and change the ledger. It owns the
engine and every transaction; each method is one step the shell takes (a read in one
connection, or a change in one transaction: a guarded update plus its event rows) and
returns frozen values, never a connection or a row the caller could write through.

The methods live by topic in `steps_runs`, `steps_batches`, `steps_submit`,
`steps_harvest`, `steps_recording`, `steps_reads`, `steps_status` and `steps_refs` (mixins
over `base.LedgerBase`), each calling the topic functions (`runs`, `items`, `batches`,
`outcomes`, `leases`, `queries`, `references`, `deliveries`). State changes keep
their guards: a stale move raises StaleTransition and an invalid one InvalidTransition,
naming the ids and states (`items.transition_items`, `batches.transition_batch`).
"""

from __future__ import annotations

from sqlalchemy import Engine

from pipeline.adapters.ledger import db
from pipeline.adapters.ledger.steps_batches import BatchSteps, Cancelled, Settle
from pipeline.adapters.ledger.steps_harvest import HarvestStart, HarvestSteps
from pipeline.adapters.ledger.steps_reads import (
    CacheChunk,
    MetricsSnapshot,
    ReadSteps,
    RunMetricData,
)
from pipeline.adapters.ledger.steps_recording import Recording, RecordingSteps
from pipeline.adapters.ledger.steps_refs import BatchSources, RefSteps
from pipeline.adapters.ledger.steps_runs import (
    BudgetSet,
    CacheTotals,
    Requeued,
    RunCounts,
    RunSpend,
    RunSteps,
)
from pipeline.adapters.ledger.steps_status import StatusFigures, StatusSteps, TableReads
from pipeline.adapters.ledger.steps_submit import LiveLoad, OpenKeys, SubmitSteps, TakenCheck

__all__ = [
    "BatchSources",
    "BudgetSet",
    "CacheChunk",
    "CacheTotals",
    "Cancelled",
    "HarvestStart",
    "Ledger",
    "LiveLoad",
    "MetricsSnapshot",
    "OpenKeys",
    "Recording",
    "Requeued",
    "RunCounts",
    "RunMetricData",
    "RunSpend",
    "Settle",
    "StatusFigures",
    "TableReads",
    "TakenCheck",
]


class Ledger(
    RunSteps,
    RecordingSteps,
    BatchSteps,
    SubmitSteps,
    HarvestSteps,
    ReadSteps,
    StatusSteps,
    RefSteps,
):
    """Every read and state change of the ledger, each in its own connection or transaction."""

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Ledger:
        """A ledger on the database at `url` (sqlite:/// or postgresql://), brought to the
        head migration first unless `migrate` is False (`db upgrade` migrates
        itself). Call `dispose()` when done."""
        engine = db.make_engine(url)
        if migrate:
            try:
                db.ensure_schema(engine)
            except BaseException:
                engine.dispose()
                raise
        return cls(engine)

    @classmethod
    def on(cls, engine: Engine) -> Ledger:
        """A ledger over an engine the caller made (and disposes of): tests, benchmarks."""
        return cls(engine)

    def upgrade(self) -> str | None:
        """`alembic upgrade head` under the migration lock; the revision it is at after."""
        db.upgrade(self._engine)
        return db.current_revision(self._engine)

    def dispose(self) -> None:
        """Close the engine's pooled connections."""
        self._engine.dispose()
