"""Indexes that answer `status` at a million items without reading the items or attempts.

`status` counted a run's items by state, final and cached through `ix_items_run_state`
(run_id, state), reading every item row for `final` and `cached`, and summed the run's
attempts (cost by model, tries, duplicates, spend) through joins that read every attempt
row: about 3 s at 1,000,000 items. `ix_items_run_counts` (run_id, state, final, cached) and
`ix_attempts_batch_sums` (batch_id, outcome, duplicate, model, cost_nanos) cover those
queries, so both databases answer them from the index alone (the attempts through the run's
batches). A pure add: the indexes are built from the existing rows (the backfill); the old
ones they extend stay (their prefixes; dropping them is a separate decision).

Revision ID: 0011_status_counts
Revises: 0010_reason_codes
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011_status_counts"
down_revision: str | Sequence[str] | None = "0010_reason_codes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_items_run_counts", "items", ["run_id", "state", "final", "cached"], unique=False
    )
    op.create_index(
        "ix_attempts_batch_sums",
        "attempts",
        ["batch_id", "outcome", "duplicate", "model", "cost_nanos"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_attempts_batch_sums", table_name="attempts")
    op.drop_index("ix_items_run_counts", table_name="items")
