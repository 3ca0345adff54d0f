"""The Vertex AI channel: a run records where its batches go (`runs.channel`, NULL for the
Gemini Developer API, else the resolved `[channel]` as JSON), so a tick picks the backend
and the limits of each run.

Revision ID: 0007_vertex_channel
Revises: 0006_run_holds
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_vertex_channel"
down_revision: str | Sequence[str] | None = "0006_run_holds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("channel", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("channel")
