"""Reference images and variants (CONTRACT section 9): each item's seed and reference sha256s,
where a run reads each of its reference images (`run_references`), and the Files API uploads
of those images with their expiry (`uploads`), written as an intent before each upload.

Revision ID: 0008_references
Revises: 0007_vertex_channel
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_references"
down_revision: str | Sequence[str] | None = "0007_vertex_channel"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("seed", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("refs", sa.Text(), nullable=True))
    op.create_table(
        "run_references",
        sa.Column("run_id", sa.String(length=200), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("mime", sa.String(length=50), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_references_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "sha256", name=op.f("pk_run_references")),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("mime", sa.String(length=50), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "state = 'uploading' OR state = 'active' OR state = 'stale'",
            name=op.f("ck_uploads_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
        sa.UniqueConstraint("name", name=op.f("uq_uploads_name")),
    )
    op.create_index("ix_uploads_sha256", "uploads", ["sha256"])


def downgrade() -> None:
    op.drop_index("ix_uploads_sha256", table_name="uploads")
    op.drop_table("uploads")
    op.drop_table("run_references")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("refs")
        batch.drop_column("seed")
