"""State CHECK constraints as OR chains instead of IN lists: SQLite evaluates `x IN (a, b, c)`
of more than two constants through a temporary B-tree built again for every row a statement
writes (one executemany of a million item rows built a million of them; callgrind showed a
third of an item insert's instructions there). `x = a OR x = b OR x = c` means the same and
costs a few comparisons.

On SQLite the constraint text is swapped in the schema itself, the procedure SQLite documents
for changes that leave every stored row valid (sqlite.org/lang_altertable.html, section 7):
instant on a ledger of any size, no table copy. PostgreSQL drops and adds the constraints.

Revision ID: 0004_checks_without_in_lists
Revises: 0003_items_cache_index
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_checks_without_in_lists"
down_revision: str | Sequence[str] | None = "0003_items_cache_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATES = ["active", "finished", "cancelled"]
BATCH_STATES = [
    "queued",
    "submitting",
    "running",
    "done",
    "harvested",
    "failed",
    "expired",
    "cancelled",
]
ITEM_STATES = ["queued", "in_batch", "succeeded", "failed", "cancelled"]
OUTCOMES = ["succeeded", "retry", "final", "cancelled", "not_sent"]


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _or(column: str, values: list[str]) -> str:
    return " OR ".join(f"{column} = {v!r}" for v in values)


# (table, constraint, text before, text after)
CHANGES = [
    ("runs", "ck_runs_state", _in("state", RUN_STATES), _or("state", RUN_STATES)),
    ("batches", "ck_batches_state", _in("state", BATCH_STATES), _or("state", BATCH_STATES)),
    ("items", "ck_items_state", _in("state", ITEM_STATES), _or("state", ITEM_STATES)),
    (
        "attempts",
        "ck_attempts_outcome",
        "outcome IS NULL OR " + _in("outcome", OUTCOMES),
        "outcome IS NULL OR " + _or("outcome", OUTCOMES),
    ),
]


def upgrade() -> None:
    _swap([(table, name, old, new) for table, name, old, new in CHANGES])


def downgrade() -> None:
    _swap([(table, name, new, old) for table, name, old, new in CHANGES])


def _swap(changes: list[tuple[str, str, str, str]]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _swap_in_sqlite_schema(changes)
        return
    for table, name, _, new in changes:
        op.drop_constraint(op.f(name), table, type_="check")
        op.create_check_constraint(op.f(name), table, new)


def _swap_in_sqlite_schema(changes: list[tuple[str, str, str, str]]) -> None:
    conn = op.get_bind()
    version = int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        for table, name, old, new in changes:
            sql = str(
                conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).scalar_one()
            )
            before = f"CONSTRAINT {name} CHECK ({old})"
            if sql.count(before) != 1:
                raise RuntimeError(f"table {table}: constraint {name} is not `{old}` as expected")
            conn.exec_driver_sql(
                "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                (sql.replace(before, f"CONSTRAINT {name} CHECK ({new})"), table),
            )
        # A new schema version makes every connection, this one included, read it again.
        conn.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")
