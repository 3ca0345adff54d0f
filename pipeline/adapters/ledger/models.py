"""SQLAlchemy 2 tables of the ledger. The invariants are constraints, so a bug becomes an
error instead of a silent double: one item per (run, key), one attempt per (item, batch),
unique display and remote names. Money lives only on attempt rows, in integer nano-dollars.

States are text plus a CHECK (not database enums): adding a state is a constraint change.
Alembic migrations in `migrations/` must match these models (`alembic check` in the tests).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pipeline.core.states import BatchState, ItemState

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: list[str]) -> str:
    """`column` is one of `values`, as an OR chain: SQLite checks an IN list of more than two
    constants through a temporary B-tree built for every row written (migration 0004)."""
    return " OR ".join(f"{column} = {v!r}" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


HOLD_REASONS = ["storage", "input", "batches"]
"""`policy.HoldReason`'s values (migration 0006)."""


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("state", ["active", "finished", "cancelled"]), "state"),
        CheckConstraint(
            "hold_reason IS NULL OR " + _in("hold_reason", HOLD_REASONS), "hold_reason"
        ),
    )

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    identity: Mapped[str] = mapped_column(String(64), unique=True)
    job: Mapped[str] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(20), default="active")
    model: Mapped[str] = mapped_column(String(100))
    fallback_model: Mapped[str | None] = mapped_column(String(100))
    spec_path: Mapped[str] = mapped_column(Text)
    spec_json: Mapped[str] = mapped_column(Text)
    input_sha256: Mapped[str] = mapped_column(String(64))
    output_uri: Mapped[str] = mapped_column(Text)
    run_date: Mapped[str] = mapped_column(String(10))
    max_attempts: Mapped[int] = mapped_column(Integer)
    max_enqueued_tokens: Mapped[int] = mapped_column(BigInteger)
    max_requests_per_batch: Mapped[int] = mapped_column(Integer)
    max_batch_bytes: Mapped[int] = mapped_column(BigInteger)
    budget_nanos: Mapped[int | None] = mapped_column(BigInteger)
    overwrite: Mapped[bool] = mapped_column(Boolean, default=False)
    use_cache: Mapped[bool] = mapped_column(Boolean, default=True)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    rejected_count: Mapped[int] = mapped_column(Integer, default=0)
    estimated_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hold_reason: Mapped[str | None] = mapped_column(String(20))
    """Why the run is held (`policy.HoldReason`), NULL when it is not (migration 0006)."""
    hold_detail: Mapped[str | None] = mapped_column(Text)
    """The error that holds it, one line, for `status`."""
    hold_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hold_not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """No tick tries the held run's storage again before this."""
    hold_tries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Tries that failed in a row since the hold began (the backoff's exponent)."""
    channel: Mapped[str | None] = mapped_column(Text)
    """Where the run's batches go: NULL for the Gemini Developer API, else the resolved
    `[channel]` as JSON (kind, project, location, staging_uri)."""
    webhook_url: Mapped[str | None] = mapped_column(Text)
    """The spec's `[notify] webhook_url`: sent as the dynamic webhook of each batch created."""


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        CheckConstraint(_in("state", [s.value for s in BatchState]), "state"),
        CheckConstraint("state <> 'running' OR remote_name IS NOT NULL", "running_has_remote"),
        Index("ix_batches_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(100))
    display_name: Mapped[str] = mapped_column(String(300), unique=True)
    state: Mapped[str] = mapped_column(String(20))
    remote_name: Mapped[str | None] = mapped_column(String(300), unique=True)
    remote_state: Mapped[str | None] = mapped_column(String(50))
    file_name: Mapped[str | None] = mapped_column(String(300))
    shard_sha256: Mapped[str | None] = mapped_column(String(64))
    """sha256 of the JSONL file recording the run wrote for this batch (`shardfile`)."""
    file_uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    output_file: Mapped[str | None] = mapped_column(String(300))
    item_count: Mapped[int] = mapped_column(Integer)
    est_tokens: Mapped[int] = mapped_column(BigInteger)
    est_nanos: Mapped[int] = mapped_column(BigInteger)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    create_tries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    harvested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When the service says the batch ended (its endTime), as seen by the poll that found it."""
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("run_id", "key"),
        CheckConstraint(_in("state", [s.value for s in ItemState]), "state"),
        CheckConstraint("state <> 'succeeded' OR uri IS NOT NULL", "succeeded_has_uri"),
        # Covers `status`'s counts by state, final and cached (migration 0011), and every
        # lookup by run and state (0013 dropped its prefix, ix_items_run_state).
        Index("ix_items_run_counts", "run_id", "state", "final", "cached"),
        Index("ix_items_batch", "batch_id"),
        # Partial: the prompt cache looks up stored images only (migration 0003).
        Index(
            "ix_items_cache",
            "prompt_sha256",
            sqlite_where=text("state = 'succeeded'"),
            postgresql_where=text("state = 'succeeded'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    key: Mapped[str] = mapped_column(Text)
    row: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    aspect_ratio: Mapped[str] = mapped_column(String(10))
    image_size: Mapped[str] = mapped_column(String(10))
    model: Mapped[str] = mapped_column(String(100))
    est_tokens: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    fallback_used: Mapped[bool] = mapped_column(Boolean, default=False)
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"))
    uri: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    reason_code: Mapped[str | None] = mapped_column(String(20))
    """The `core.reasons.ReasonCode` of `error` (None while it has none)."""
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seed: Mapped[int | None] = mapped_column(Integer)
    """generationConfig.seed of a variant (None without variants)."""
    refs: Mapped[str | None] = mapped_column(Text)
    """The reference images' sha256s, comma-separated, in the order they are sent."""


class RunReference(Base):
    """Where a run reads one of its reference images (by sha256), for its uploads."""

    __tablename__ = "run_references"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    """An absolute local path or a gs://bucket/object uri."""
    mime: Mapped[str] = mapped_column(String(50))
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class Upload(Base):
    """A reference image uploaded through the Files API. The row is written (`uploading`,
    with the file name nanobatch chose) before the upload, so a kill between the upload and
    its record is found again by that name instead of uploading twice; `active` once the
    service's uri and expiry are recorded; `stale` when a line found the file gone."""

    __tablename__ = "uploads"
    __table_args__ = (
        CheckConstraint(_in("state", ["uploading", "active", "stale"]), "state"),
        Index("ix_uploads_sha256", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(300), unique=True)
    """files/<id>, chosen before the upload."""
    uri: Mapped[str | None] = mapped_column(Text)
    mime: Mapped[str] = mapped_column(String(50))
    state: Mapped[str] = mapped_column(String(20))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """The service's expirationTime."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uploaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


class Attempt(Base):
    """One item's try in one batch, written once when its outcome is known (migration 0010):
    while the item is in flight it carries the batch (`items.batch_id`) and has no row here,
    and UNIQUE(item_id, batch_id, duplicate) makes a replayed insert a no-op.

    A results file with several lines for one key (Vertex AI) gives the item's attempt in
    that batch (`duplicate` 0) and one row per other billed line (`duplicate` 1, 2, ...,
    outcome `duplicate`): its cost counts, it is not a try."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("item_id", "batch_id", "duplicate"),
        CheckConstraint(
            _in("outcome", ["succeeded", "retry", "final", "cancelled", "not_sent", "duplicate"]),
            "outcome",
        ),
        # Covers `status`'s sums over a run's attempts, read through its batches (0011), and
        # every lookup by batch (0013 dropped its prefix, ix_attempts_batch).
        Index("ix_attempts_batch_sums", "batch_id", "outcome", "duplicate", "model", "cost_nanos"),
        Index("ix_attempts_recorded_at", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    model: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    reason_code: Mapped[str | None] = mapped_column(String(20))
    """The `core.reasons.ReasonCode` of `reason`: what programs read (metrics, policy)."""
    reason_status: Mapped[int | None] = mapped_column(Integer)
    """The gRPC/HTTP code of a per-line error (the metrics label `grpc_13`)."""
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_image_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_text_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    thinking_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    standard_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duplicate: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Reject(Base):
    __tablename__ = "rejects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    row: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)


class Event(Base):
    """Every state change of a run, batch or item, written in the same transaction."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    run_id: Mapped[str] = mapped_column(String(200), index=True)
    batch_id: Mapped[int | None] = mapped_column(Integer)
    item_id: Mapped[int | None] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A named lock held until `expires_at`: a dead holder delays others by at most its TTL."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


DELIVERY_STATES = ("queued", "done", "ignored")


class Delivery(Base):
    """A webhook delivery `listen` accepted, recorded once by its key (`webhook-id`, the JWT's
    `jti`, or the body's sha256): a repeat finds the key taken and does nothing. `queued`
    until its batch was moved on, then `done`; `ignored` for events or batches not ours."""

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(_in("state", list(DELIVERY_STATES)), "state"),
        Index("ix_deliveries_state", "state"),
        Index("ix_deliveries_batch_name", "batch_name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    scheme: Mapped[str] = mapped_column(String(10))
    event: Mapped[str] = mapped_column(String(100))
    batch_name: Mapped[str | None] = mapped_column(String(300))
    batch_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
