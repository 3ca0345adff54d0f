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
    # A plain ADD COLUMN: on SQLite a batch "move and copy" of `runs` would drop a table that
    # batches and items reference, and keep 0006's reflected CHECK apart from its column.
    op.add_column("runs", sa.Column("channel", sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN channel")
