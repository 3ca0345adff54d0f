"""Index only stored images for the prompt cache: `ix_items_prompt_sha256` covered every item,
so recording a million-item run updated a random-order index of 64-character hashes on every
insert. The cache only ever looks up succeeded items, so the new index is partial
(WHERE state = 'succeeded'): items join it when their image is stored.

Revision ID: 0003_items_cache_index
Revises: 0002_attempts_recorded_at
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_items_cache_index"
down_revision: str | Sequence[str] | None = "0002_attempts_recorded_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUCCEEDED = sa.text("state = 'succeeded'")


def upgrade() -> None:
    op.drop_index("ix_items_prompt_sha256", table_name="items")
    op.create_index(
        "ix_items_cache",
        "items",
        ["prompt_sha256"],
        unique=False,
        sqlite_where=SUCCEEDED,
        postgresql_where=SUCCEEDED,
    )


def downgrade() -> None:
    op.drop_index("ix_items_cache", table_name="items")
    op.create_index("ix_items_prompt_sha256", "items", ["prompt_sha256", "state"], unique=False)
