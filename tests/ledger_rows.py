"""Raw SQL for a minimal run row and its batches' rows, valid from migration 0005 to head:
for migration tests that fill a ledger at an old revision, and for the expand benchmark's
`ledger` phase, whose item rows need a run and batches for their foreign keys."""

from __future__ import annotations

RUN_INSERT = (
    "INSERT INTO runs (id, identity, job, state, model, spec_path, spec_json, input_sha256, "
    "output_uri, run_date, max_attempts, max_enqueued_tokens, max_requests_per_batch, "
    "max_batch_bytes, overwrite, use_cache, item_count, rejected_count, estimated_nanos, "
    "created_at) VALUES ('r1', 'i1', 'j', 'active', 'm', 's', '{}', 'h', 'out', '2026-11-28', "
    "3, 1, 1, 1, false, true, 0, 0, 0, '2026-11-28 00:00:00')"
)
"""Run `r1`."""


def batch_insert(seq: int) -> str:
    """Batch number `seq` of run `r1`, queued (in a new ledger its id is `seq` too when the
    batches are inserted in order)."""
    return (
        "INSERT INTO batches (run_id, seq, model, display_name, state, item_count, est_tokens, "
        "est_nanos, create_tries, created_at) VALUES "
        f"('r1', {seq}, 'm', 'nb-r1-{seq:05d}', 'queued', 0, 0, 0, 0, '2026-11-28 00:00:00')"
    )
