"""The ledger's tables, the frozen row values callers get, and the event row every state change
writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Table,
    insert,
)

from pipeline.adapters.ledger.models import (
    Attempt,
    Batch,
    Event,
    Item,
    Lease,
    Reject,
    Run,
    RunReference,
    Upload,
)

T = TypeVar("T")
RUNS = cast(Table, Run.__table__)
BATCHES = cast(Table, Batch.__table__)
ITEMS = cast(Table, Item.__table__)
ATTEMPTS = cast(Table, Attempt.__table__)
REJECTS = cast(Table, Reject.__table__)
EVENTS = cast(Table, Event.__table__)
LEASES = cast(Table, Lease.__table__)
RUN_REFERENCES = cast(Table, RunReference.__table__)
UPLOADS = cast(Table, Upload.__table__)


@dataclass(frozen=True)
class RunRow:
    id: str
    job: str
    state: str
    model: str
    fallback_model: str | None
    output_uri: str
    run_date: str
    max_attempts: int
    max_enqueued_tokens: int
    max_requests_per_batch: int
    max_batch_bytes: int
    budget_nanos: int | None
    overwrite: bool
    use_cache: bool
    item_count: int
    rejected_count: int
    estimated_nanos: int
    created_at: datetime
    finished_at: datetime | None
    spec_path: str
    hold_reason: str | None = None
    hold_detail: str | None = None
    hold_since: datetime | None = None
    hold_not_before: datetime | None = None
    hold_tries: int = 0
    channel: str | None = None
    """NULL: the Gemini Developer API; else the run's `[channel]` as JSON."""
    webhook_url: str | None = None
    """`[notify] webhook_url`: the dynamic webhook sent with each batch it creates."""


@dataclass(frozen=True)
class BatchRow:
    id: int
    run_id: str
    seq: int
    model: str
    display_name: str
    state: str
    remote_name: str | None
    remote_state: str | None
    file_name: str | None
    shard_sha256: str | None
    file_uploaded_at: datetime | None
    output_file: str | None
    item_count: int
    est_tokens: int
    est_nanos: int
    not_before: datetime | None
    create_tries: int
    last_error: str | None
    created_at: datetime
    submitted_at: datetime | None
    finished_at: datetime | None
    ended_at: datetime | None = None
    """When the service says the batch ended (its endTime)."""


def _run(row: Any) -> RunRow:
    return RunRow(**{f: getattr(row, f) for f in RunRow.__dataclass_fields__})


def _batch(row: Any) -> BatchRow:
    return BatchRow(**{f: getattr(row, f) for f in BatchRow.__dataclass_fields__})


# ── helpers ──────────────────────────────────────────────────────────────────


def _event(
    conn: Connection,
    run_id: str,
    batch_id: int | None,
    item_id: int | None,
    from_: str | None,
    to: str,
    detail: str | None,
    now: datetime,
) -> None:
    conn.execute(
        insert(EVENTS).values(
            at=now,
            run_id=run_id,
            batch_id=batch_id,
            item_id=item_id,
            from_state=from_,
            to_state=to,
            detail=detail,
        )
    )


def _chunks(values: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
