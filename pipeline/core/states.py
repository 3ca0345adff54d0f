"""The named states of batches and items, the moves allowed between them, and the map from
the SDK's JOB_STATE_* names. Pure: the ledger calls `check_*` before every guarded update.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from pipeline.core.errors import InvalidTransition


class BatchState(StrEnum):
    QUEUED = "queued"  #: items assigned; waiting for quota, budget or backoff
    SUBMITTING = "submitting"  #: intent recorded; create may or may not have happened
    RUNNING = "running"  #: the service has it (PENDING or RUNNING remotely)
    DONE = "done"  #: remote terminal with output to harvest (SUCCEEDED, or CANCELLED with output)
    HARVESTED = "harvested"  #: every line recorded; terminal
    FAILED = "failed"  #: remote FAILED without output; items requeued; terminal
    EXPIRED = "expired"  #: remote EXPIRED without output; items requeued; terminal
    CANCELLED = "cancelled"  #: cancelled before or without output; terminal


class ItemState(StrEnum):
    QUEUED = "queued"  #: waiting to be put in a batch
    IN_BATCH = "in_batch"  #: in a queued or live batch
    SUCCEEDED = "succeeded"  #: image stored and recorded
    FAILED = "failed"  #: failed (for good when `final`); `retry` may requeue
    CANCELLED = "cancelled"  #: its run was cancelled before it had a result


LIVE_BATCH_STATES: Final = frozenset({BatchState.SUBMITTING, BatchState.RUNNING})
TERMINAL_BATCH_STATES: Final = frozenset(
    {BatchState.HARVESTED, BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED}
)
RESERVING_BATCH_STATES: Final = (BatchState.SUBMITTING, BatchState.RUNNING, BatchState.DONE)
"""Batches created (or being created) and not yet harvested: their estimates are reserved
against budgets until harvest records their costs."""
OPEN_ITEM_STATES: Final = frozenset({ItemState.QUEUED, ItemState.IN_BATCH})

BATCH_TRANSITIONS: Final[Mapping[BatchState, frozenset[BatchState]]] = {
    BatchState.QUEUED: frozenset({BatchState.SUBMITTING, BatchState.CANCELLED}),
    BatchState.SUBMITTING: frozenset(
        {BatchState.RUNNING, BatchState.QUEUED, BatchState.FAILED, BatchState.CANCELLED}
    ),
    BatchState.RUNNING: frozenset(
        {BatchState.DONE, BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED}
    ),
    BatchState.DONE: frozenset({BatchState.HARVESTED}),
    BatchState.HARVESTED: frozenset(),
    BatchState.FAILED: frozenset(),
    BatchState.EXPIRED: frozenset(),
    BatchState.CANCELLED: frozenset(),
}

ITEM_TRANSITIONS: Final[Mapping[ItemState, frozenset[ItemState]]] = {
    # QUEUED -> FAILED: its name is taken at the output location (pipeline.shell.taken).
    ItemState.QUEUED: frozenset(
        {ItemState.IN_BATCH, ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED}
    ),
    ItemState.IN_BATCH: frozenset(
        {ItemState.QUEUED, ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED}
    ),
    ItemState.SUCCEEDED: frozenset(),
    ItemState.FAILED: frozenset({ItemState.QUEUED}),
    ItemState.CANCELLED: frozenset({ItemState.QUEUED}),
}

# google-genai maps BATCH_STATE_X to JOB_STATE_X; older or Vertex names appear too.
_REMOTE: Final[Mapping[str, str]] = {
    "JOB_STATE_PENDING": "running",
    "JOB_STATE_QUEUED": "running",
    "JOB_STATE_RUNNING": "running",
    "JOB_STATE_UPDATING": "running",
    "JOB_STATE_PAUSED": "running",
    "JOB_STATE_CANCELLING": "running",
    "JOB_STATE_SUCCEEDED": "succeeded",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "succeeded",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "expired",
    "JOB_STATE_CANCELLED": "cancelled",
}


def remote_outcome(job_state: str) -> str:
    """'running', 'succeeded', 'failed', 'expired' or 'cancelled' for a JOB_STATE_* name.

    Unknown names count as still running: a new state must never make us drop a batch.
    """
    name = job_state.replace("BATCH_STATE_", "JOB_STATE_")
    return _REMOTE.get(name, "running")


def check_batch_transition(from_: BatchState, to: BatchState) -> None:
    """Raise InvalidTransition unless a batch may move from `from_` to `to`."""
    if to not in BATCH_TRANSITIONS[from_]:
        raise InvalidTransition(f"a batch cannot move from {from_.value} to {to.value}")
