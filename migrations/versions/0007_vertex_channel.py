"""The Vertex AI channel: a run records where its batches go (`runs.channel`, NULL for the
Gemini Developer API, else the resolved `[channel]` as JSON), so a tick picks the backend
and the limits of each run; and billed duplicate lines are attempt rows beside the item's
attempt in a batch (`attempts.duplicate` 1, 2, ..., outcome `duplicate`; the attempt
itself is 0), so the unique key of attempts becomes (item_id, batch_id, duplicate).

On SQLite the attempts table is rebuilt (the procedure sqlite.org/lang_altertable.html
section 7 gives for a changed constraint): nothing references it, so it is copied into a
new table with the new key and CHECK, and renamed. PostgreSQL alters it in place.

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

OUTCOMES = ["succeeded", "retry", "final", "cancelled", "not_sent"]
COLUMNS = (
    "id, item_id, batch_id, model, outcome, reason, input_tokens, output_image_tokens, "
    "output_text_tokens, thinking_tokens, cost_nanos, standard_nanos, recorded_at"
)


def _check(outcomes: list[str]) -> str:
    return "outcome IS NULL OR " + " OR ".join(f"outcome = {v!r}" for v in outcomes)


def _attempts_ddl(name: str, with_duplicate: bool) -> str:
    """The attempts table as the models define it, before (False) or after (True)."""
    outcomes = [*OUTCOMES, "duplicate"] if with_duplicate else OUTCOMES
    duplicate = "\tduplicate INTEGER DEFAULT 0 NOT NULL, \n" if with_duplicate else ""
    key = "item_id, batch_id, duplicate" if with_duplicate else "item_id, batch_id"
    key_name = "uq_attempts_item_id_batch_id" + ("_duplicate" if with_duplicate else "")
    return (
        f"CREATE TABLE {name} (\n"
        "\tid INTEGER NOT NULL, \n"
        "\titem_id INTEGER NOT NULL, \n"
        "\tbatch_id INTEGER NOT NULL, \n"
        "\tmodel VARCHAR(100) NOT NULL, \n"
        "\toutcome VARCHAR(20), \n"
        "\treason TEXT, \n"
        "\tinput_tokens BIGINT NOT NULL, \n"
        "\toutput_image_tokens BIGINT NOT NULL, \n"
        "\toutput_text_tokens BIGINT NOT NULL, \n"
        "\tthinking_tokens BIGINT NOT NULL, \n"
        "\tcost_nanos BIGINT NOT NULL, \n"
        "\tstandard_nanos BIGINT NOT NULL, \n"
        "\trecorded_at DATETIME, \n"
        f"{duplicate}"
        "\tCONSTRAINT pk_attempts PRIMARY KEY (id), \n"
        f"\tCONSTRAINT {key_name} UNIQUE ({key}), \n"
        f"\tCONSTRAINT ck_attempts_outcome CHECK ({_check(outcomes)}), \n"
        "\tCONSTRAINT fk_attempts_item_id_items FOREIGN KEY(item_id) REFERENCES items (id), \n"
        "\tCONSTRAINT fk_attempts_batch_id_batches FOREIGN KEY(batch_id) REFERENCES batches (id)\n"
        ")"
    )


def _rebuild_sqlite_attempts(with_duplicate: bool) -> None:
    columns = COLUMNS + (", duplicate" if with_duplicate else "")
    select = COLUMNS + (", 0" if with_duplicate else "")
    op.execute(_attempts_ddl("attempts_new", with_duplicate))
    op.execute(f"INSERT INTO attempts_new ({columns}) SELECT {select} FROM attempts")
    op.execute("DROP TABLE attempts")
    op.execute("ALTER TABLE attempts_new RENAME TO attempts")
    op.execute("CREATE INDEX ix_attempts_batch ON attempts (batch_id)")
    op.execute("CREATE INDEX ix_attempts_recorded_at ON attempts (recorded_at)")


def upgrade() -> None:
    # A plain ADD COLUMN: on SQLite a batch "move and copy" of `runs` would drop a table that
    # batches and items reference, and keep 0006's reflected CHECK apart from its column.
    op.add_column("runs", sa.Column("channel", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_attempts(with_duplicate=True)
        return
    op.add_column(
        "attempts",
        sa.Column("duplicate", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.drop_constraint(op.f("uq_attempts_item_id_batch_id"), "attempts", type_="unique")
    op.create_unique_constraint(
        op.f("uq_attempts_item_id_batch_id_duplicate"),
        "attempts",
        ["item_id", "batch_id", "duplicate"],
    )
    op.drop_constraint(op.f("ck_attempts_outcome"), "attempts", type_="check")
    op.create_check_constraint(
        op.f("ck_attempts_outcome"), "attempts", _check([*OUTCOMES, "duplicate"])
    )


def downgrade() -> None:
    # The duplicate rows cannot live under the old key: their costs go with them.
    op.execute("DELETE FROM attempts WHERE duplicate > 0")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite_attempts(with_duplicate=False)
    else:
        op.drop_constraint(op.f("ck_attempts_outcome"), "attempts", type_="check")
        op.create_check_constraint(op.f("ck_attempts_outcome"), "attempts", _check(OUTCOMES))
        op.drop_constraint(
            op.f("uq_attempts_item_id_batch_id_duplicate"), "attempts", type_="unique"
        )
        op.create_unique_constraint(
            op.f("uq_attempts_item_id_batch_id"), "attempts", ["item_id", "batch_id"]
        )
        op.drop_column("attempts", "duplicate")
    op.execute("ALTER TABLE runs DROP COLUMN channel")
