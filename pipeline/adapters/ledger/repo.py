"""The ledger's one face: every query and state change, by topic in the modules beside it
(`rows`: tables, row values and the event row; `runs`; `items`; `batches`; `outcomes`:
attempts' results; `leases`; `queries`: reports, cache, metrics, budgets; `references`:
reference images and their uploads). Callers import `repo` and call `repo.<name>`.

Callers get frozen values, never ORM objects, and change state only through the guarded
updates here: `UPDATE ... WHERE id = :id AND state = :from`, with the event row in the same
transaction. Zero rows matched means someone else moved it first. Every item move goes
through `items.transition_items`, which checks the pair against `states.ITEM_TRANSITIONS`.
"""

from __future__ import annotations

from pipeline.adapters.ledger.batches import (  # noqa: F401
    UNFINISHED_BATCH_STATES,
    OpenedBatch,
    batch_by_remote_name,
    batch_state_counts,
    batch_states_by_display,
    batches_in,
    batches_of_run,
    close_batch,
    create_batch,
    day_spend,
    get_batch,
    live_batch_count,
    live_tokens,
    open_batch,
    run_spend,
    transition_batch,
    update_batch,
)
from pipeline.adapters.ledger.items import (  # noqa: F401
    any_stored_image,
    batch_attempts,
    batch_request_rows,
    cached_hashes,
    cancel_open_items,
    fail_items_for_good,
    has_open_items,
    insert_attempts,
    item_counts,
    item_events,
    item_totals,
    open_batch_items,
    open_keys,
    queued_items,
    requeue_items,
    transition_items,
)
from pipeline.adapters.ledger.leases import (  # noqa: F401
    acquire_lease,
    claim_batch,
    holding_batch,
    release_batch,
    release_lease,
)
from pipeline.adapters.ledger.outcomes import (  # noqa: F401
    AttemptOutcome,
    BilledDuplicate,
    attempt_values,
    record_outcomes,
    refuse_batch_items,
)
from pipeline.adapters.ledger.queries import (  # noqa: F401
    attempt_reasons,
    batch_counts_by_state,
    batch_times,
    cache_savings,
    cache_sources,
    cached_count,
    cost_by_model,
    duplicate_totals,
    failed_items,
    items_by_run_state,
    mark_cached,
    metric_runs,
    rejects_of_run,
    report_columns,
    report_rows,
    runs_to_notify,
    succeeded_rows,
)
from pipeline.adapters.ledger.references import (  # noqa: F401
    ReferenceRow,
    UploadRow,
    batch_items_with_refs,
    batch_reference_shas,
    insert_run_references,
    mark_upload_stale,
    not_send_items,
    record_upload_done,
    record_upload_intent,
    run_has_references,
    run_references,
    upload_named,
    upload_names_of,
    uploads_named,
    uploads_of,
)
from pipeline.adapters.ledger.rows import (  # noqa: F401
    ATTEMPTS,
    BATCHES,
    EVENTS,
    ITEMS,
    LEASES,
    REJECTS,
    RUN_REFERENCES,
    RUNS,
    UPLOADS,
    BatchRow,
    RunRow,
)
from pipeline.adapters.ledger.runs import (  # noqa: F401
    ITEM_ROW,
    RICH_ITEM_ROW,
    find_run_by_identity,
    get_run,
    hold_run,
    insert_items,
    insert_rejects,
    insert_run,
    latest_active_run_like,
    list_runs,
    mark_run_notified,
    release_hold,
    run_outputs,
    set_run_budget,
    set_run_state,
    update_run_counts,
)
from pipeline.adapters.ledger.status import (  # noqa: F401
    run_attempt_totals,
    run_error_reasons,
    status_counts,
    status_spend,
)
