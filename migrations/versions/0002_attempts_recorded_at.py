"""Index attempts by recorded_at: the daily budget sums today's recorded costs, which
scanned every attempt ever made.

Revision ID: 0002_attempts_recorded_at
Revises: 0001_initial
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_attempts_recorded_at"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_attempts_recorded_at", "attempts", ["recorded_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_attempts_recorded_at", table_name="attempts")
