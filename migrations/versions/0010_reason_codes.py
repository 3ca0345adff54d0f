"""Reason codes (issue 14): `attempts.reason_code` and `attempts.reason_status` (the
gRPC/HTTP number of a per-line error), `items.reason_code`, backfilled from the recorded
text.

The backfill reads the text the way the metrics' `reason_class` did before codes existed
(same rules, same order), so every recorded attempt keeps its error class; where that class
was `other` (or `cancelled`) the text is read further for the finer code. Plain ADD / DROP
COLUMN, as 0006 and 0009: no table is rebuilt, and the columns have no CHECK (adding one on
SQLite would copy the table; the code set lives in `core.reasons.ReasonCode`).

Revision ID: 0010_reason_codes
Revises: 0009_webhook_deliveries
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_reason_codes"
down_revision: str | Sequence[str] | None = "0009_webhook_deliveries"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETRYABLE_GRPC = "2, 4, 8, 10, 13, 14"
RETRYABLE_HTTP = "429, 500, 503, 504"


def _rpc(text: str, postgres: bool) -> tuple[str, str, str]:
    """(is a gRPC line error, is an HTTP line error, its number) as SQL over `text`."""
    if postgres:
        number = f"CAST(substring({text} from '^[a-z]+ ([0-9]+)') AS INTEGER)"
        return f"{text} ~ '^grpc [0-9]'", f"{text} ~ '^http [0-9]'", number
    number = f"CAST(substr({text}, 6) AS INTEGER)"  # SQLite casts the leading digits
    return f"{text} GLOB 'grpc [0-9]*'", f"{text} GLOB 'http [0-9]*'", number


def _code(text: str, state: str, postgres: bool, items: bool) -> str:
    """The CASE giving a reason text's code; `state` is the attempt's outcome (or the item's
    state), for the rules that read it."""
    low = f"lower({text})"
    grpc, http, number = _rpc(text, postgres)

    def starts(*prefixes: str) -> str:
        return " OR ".join(f"{low} LIKE '{p}%'" for p in prefixes)

    rules = [
        # First for items: their error is the attempt's reason with the refusal after it.
        *([(f"{low} LIKE '%; fallback_model % not tried:%'", "fallback_refused")] if items else []),
        *([] if items else [(f"{state} = 'duplicate'", "duplicate")]),
        (f"{grpc} AND {number} IN ({RETRYABLE_GRPC})", "grpc_retryable"),
        (grpc, "grpc_final"),
        (f"{http} AND {number} IN ({RETRYABLE_HTTP})", "http_retryable"),
        (http, "http_final"),
        (starts("safety:"), "safety"),
        (starts("blocked:"), "prompt_blocked"),
        (starts("missing from"), "missing"),
        (f"({starts('no image')}) AND {low} LIKE '%max_tokens%'", "max_tokens"),
        (starts("no image"), "no_image"),
        (starts("batch create refused", "create refused"), "create_refused"),
        (starts("malformed"), "malformed"),
        (f"({starts('run cancelled')}) AND {low} LIKE '%not stored%'", "unstored"),
        (starts("run cancelled"), "run_cancelled"),
        (starts("batch failed"), "batch_failed"),
        (starts("batch expired"), "batch_expired"),
        (starts("batch cancelled"), "batch_cancelled"),
        (
            f"{low} LIKE '%already%' OR {low} LIKE '%conflict%' OR {low} LIKE '%different%'",
            "conflict",
        ),
        (starts("name taken:"), "conflict"),
        (f"{state} = 'cancelled'", "run_cancelled"),
        # Classed `other` before: read further.
        (f"({starts('status:')}) AND {state} = 'final'", "status_final"),
        (starts("status:"), "status_retryable"),
        (f"({starts('reference image')}) AND {low} LIKE '%gone or expired%'", "reference_gone"),
        (starts("reference image") if items else f"{state} = 'not_sent'", "reference_unsent"),
    ]
    whens = " ".join(f"WHEN {cond} THEN '{code}'" for cond, code in rules)
    return f"CASE {whens} ELSE 'other' END"


def upgrade() -> None:
    op.add_column("attempts", sa.Column("reason_code", sa.String(length=20), nullable=True))
    op.add_column("attempts", sa.Column("reason_status", sa.Integer(), nullable=True))
    op.add_column("items", sa.Column("reason_code", sa.String(length=20), nullable=True))
    postgres = op.get_bind().dialect.name == "postgresql"
    text = "trim(reason)"
    grpc, http, number = _rpc(text, postgres)
    op.execute(
        f"UPDATE attempts SET reason_code = {_code(text, 'outcome', postgres, False)}, "
        f"reason_status = CASE WHEN outcome <> 'duplicate' AND ({grpc} OR {http}) "
        f"THEN {number} END "
        "WHERE outcome IS NOT NULL AND outcome <> 'succeeded'"
    )
    op.execute(
        f"UPDATE items SET reason_code = {_code('trim(error)', 'state', postgres, True)} "
        "WHERE error IS NOT NULL AND state <> 'succeeded'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE items DROP COLUMN reason_code")
    op.execute("ALTER TABLE attempts DROP COLUMN reason_status")
    op.execute("ALTER TABLE attempts DROP COLUMN reason_code")
