"""The sha256 of a batch's JSONL file as recording the run wrote it (`shardfile`): the upload
sends that file as it is only when its bytes still match, and builds it from the ledger
otherwise.

Revision ID: 0005_batches_shard_sha256
Revises: 0004_checks_without_in_lists
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_batches_shard_sha256"
down_revision: str | Sequence[str] | None = "0004_checks_without_in_lists"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("shard_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("shard_sha256")
