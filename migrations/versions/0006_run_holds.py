"""A held run (CONTRACT section 6, "Runs are isolated"): the reason code of the failure that
holds it, a one-line detail, since when, when the next try is due, and how many tries failed
in a row (the backoff's exponent). All NULL/0 while the run is not held.

Revision ID: 0006_run_holds
Revises: 0005_batches_shard_sha256
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_run_holds"
down_revision: str | Sequence[str] | None = "0005_batches_shard_sha256"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HOLD_REASONS = ["storage", "input", "batches"]
COLUMNS = ["hold_reason", "hold_detail", "hold_since", "hold_not_before", "hold_tries"]
CHECK = "hold_reason IS NULL OR " + " OR ".join(f"hold_reason = {v!r}" for v in HOLD_REASONS)


def upgrade() -> None:
    # Plain ADD COLUMNs (the CHECK inline, named as the models name it): on SQLite a batch
    # "move and copy" of `runs` would drop a table that batches and items reference.
    op.execute(
        "ALTER TABLE runs ADD COLUMN hold_reason VARCHAR(20) "
        f"CONSTRAINT ck_runs_hold_reason CHECK ({CHECK})"
    )
    op.add_column("runs", sa.Column("hold_detail", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("hold_since", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("hold_not_before", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "runs", sa.Column("hold_tries", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )


def downgrade() -> None:
    # SQLite (3.35+) drops each column in place, its inline CHECK with it; a batch copy of
    # `runs` would keep the reflected CHECK without its column.
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_runs_hold_reason"), "runs", type_="check")
    for column in COLUMNS[::-1]:
        op.execute(f"ALTER TABLE runs DROP COLUMN {column}")
