"""Webhooks (issue 18): the `deliveries` table (one row per accepted delivery, unique by its
key), the service's end time of a batch (`batches.ended_at`, for the end-to-stored metric)
and a run's dynamic webhook URL (`runs.webhook_url`, from the spec's `[notify]`).

Revision ID: 0006_webhook_deliveries
Revises: 0005_batches_shard_sha256
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_webhook_deliveries"
down_revision: str | Sequence[str] | None = "0005_batches_shard_sha256"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("scheme", sa.String(length=10), nullable=False),
        sa.Column("event", sa.String(length=100), nullable=False),
        sa.Column("batch_name", sa.String(length=300), nullable=True),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state = 'queued' OR state = 'done' OR state = 'ignored'",
            name=op.f("ck_deliveries_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("key", name=op.f("uq_deliveries_key")),
    )
    op.create_index("ix_deliveries_state", "deliveries", ["state"], unique=False)
    op.create_index("ix_deliveries_batch_name", "deliveries", ["batch_name"], unique=False)
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("webhook_url")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("ended_at")
    op.drop_index("ix_deliveries_batch_name", table_name="deliveries")
    op.drop_index("ix_deliveries_state", table_name="deliveries")
    op.drop_table("deliveries")
