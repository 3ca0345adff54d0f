"""Webhooks (issue 18): the `deliveries` table (one row per accepted delivery, unique by its
key), the service's end time of a batch (`batches.ended_at`, for the end-to-stored metric)
and a run's dynamic webhook URL (`runs.webhook_url`, from the spec's `[notify]`).

Revision ID: 0009_webhook_deliveries
Revises: 0008_references
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_webhook_deliveries"
down_revision: str | Sequence[str] | None = "0008_references"
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
    # Plain ADD / DROP COLUMN, as 0006: on SQLite a batch "move and copy" of `runs` would turn
    # the inline CHECK of hold_reason into a table CHECK that then blocks 0006's downgrade.
    op.add_column("batches", sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("webhook_url", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN webhook_url")
    op.execute("ALTER TABLE batches DROP COLUMN ended_at")
    op.drop_index("ix_deliveries_batch_name", table_name="deliveries")
    op.drop_index("ix_deliveries_state", table_name="deliveries")
    op.drop_table("deliveries")
