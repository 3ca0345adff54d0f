"""Drop the two indexes that 0011's covering indexes made redundant (issue 19).

`ix_items_run_state` (run_id, state) is a prefix of `ix_items_run_counts` (run_id, state,
final, cached), and `ix_attempts_batch` (batch_id) a prefix of `ix_attempts_batch_sums`
(batch_id, outcome, duplicate, model, cost_nanos): every lookup the old ones answered, the
wider ones answer from the same leading columns, on SQLite and PostgreSQL. Each kept copy
cost every item and attempt insert one more B-tree update: recording a million items into
the ledger went from 6.16 to 5.44 s without `ix_items_run_state` in a bare insert test.

Downgrade builds them again from the rows.

Revision ID: 0013_drop_prefix_indexes
Revises: 0012_attempts_once
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013_drop_prefix_indexes"
down_revision: str | Sequence[str] | None = "0012_attempts_once"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_items_run_state", table_name="items")
    op.drop_index("ix_attempts_batch", table_name="attempts")


def downgrade() -> None:
    op.create_index("ix_attempts_batch", "attempts", ["batch_id"], unique=False)
    op.create_index("ix_items_run_state", "items", ["run_id", "state"], unique=False)
