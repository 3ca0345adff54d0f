"""Attempts written once (issue 14): an attempt row is inserted when its outcome is known,
under UNIQUE(item_id, batch_id, duplicate), instead of being inserted with outcome NULL when
its item goes into a batch and filled in by the harvest. While an item is in flight it
carries its batch (`items.batch_id`, state `in_batch`), which it already did.

Upgrade: each open attempt (outcome NULL) gives its item's batch_id (the same one in any
ledger written by nanobatch; set again so nothing depends on it), then the open attempts are
deleted and `attempts.outcome` becomes NOT NULL, its CHECK no longer allowing NULL.
Downgrade: every item in a batch gets its open attempt back.

On SQLite the column and constraint text are swapped in the schema itself, the procedure
sqlite.org/lang_altertable.html section 7 gives for changes every stored row already
satisfies (no NULL outcome is left): no table copy. PostgreSQL alters the table in place.

Revision ID: 0012_attempts_once
Revises: 0011_status_counts
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_attempts_once"
down_revision: str | Sequence[str] | None = "0011_status_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTCOMES = " OR ".join(
    f"outcome = {v!r}"
    for v in ("succeeded", "retry", "final", "cancelled", "not_sent", "duplicate")
)
OPEN_CHECK = f"outcome IS NULL OR {OUTCOMES}"
# (text before, text after) in SQLite's CREATE TABLE of attempts (see 0007's DDL).
SQLITE_CHANGES = [
    ("\toutcome VARCHAR(20), \n", "\toutcome VARCHAR(20) NOT NULL, \n"),
    (
        f"CONSTRAINT ck_attempts_outcome CHECK ({OPEN_CHECK})",
        f"CONSTRAINT ck_attempts_outcome CHECK ({OUTCOMES})",
    ),
]


def upgrade() -> None:
    op.execute(
        "UPDATE items SET batch_id = (SELECT max(a.batch_id) FROM attempts a "
        "WHERE a.item_id = items.id AND a.outcome IS NULL AND a.duplicate = 0) "
        "WHERE EXISTS (SELECT 1 FROM attempts a "
        "WHERE a.item_id = items.id AND a.outcome IS NULL AND a.duplicate = 0)"
    )
    op.execute("DELETE FROM attempts WHERE outcome IS NULL")
    if op.get_bind().dialect.name == "sqlite":
        _swap_in_sqlite_schema(SQLITE_CHANGES)
        return
    op.alter_column("attempts", "outcome", nullable=False)
    op.drop_constraint(op.f("ck_attempts_outcome"), "attempts", type_="check")
    op.create_check_constraint(op.f("ck_attempts_outcome"), "attempts", OUTCOMES)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _swap_in_sqlite_schema([(new, old) for old, new in SQLITE_CHANGES])
    else:
        op.drop_constraint(op.f("ck_attempts_outcome"), "attempts", type_="check")
        op.create_check_constraint(op.f("ck_attempts_outcome"), "attempts", OPEN_CHECK)
        op.alter_column("attempts", "outcome", nullable=True)
    op.execute(
        "INSERT INTO attempts (item_id, batch_id, model, input_tokens, output_image_tokens, "
        "output_text_tokens, thinking_tokens, cost_nanos, standard_nanos, duplicate) "
        "SELECT items.id, items.batch_id, batches.model, 0, 0, 0, 0, 0, 0, 0 "
        "FROM items JOIN batches ON batches.id = items.batch_id "
        "WHERE items.state = 'in_batch'"
    )


def _swap_in_sqlite_schema(changes: list[tuple[str, str]]) -> None:
    conn = op.get_bind()
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())
    sql = str(
        conn.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'attempts'"
        ).scalar_one()
    )
    for old, new in changes:
        if sql.count(old) != 1:
            raise RuntimeError(f"table attempts: `{old.strip()}` is not in its schema as expected")
        sql = sql.replace(old, new)
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        conn.exec_driver_sql(
            "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'attempts'", (sql,)
        )
        # A new schema version makes every connection, this one included, read it again.
        conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")
