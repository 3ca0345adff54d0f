"""Reason codes: why an attempt or an item ended as it did, and why queued work waits, as
typed values. Pure.

Every reason nanobatch records has two faces: the text users read in `status`, reports and
manifests (it stays as it was), and a `ReasonCode` that programs use (the `reason_code`
column of attempts and items, the metrics' error classes, the policy's fallback rule). A
per-line gRPC/HTTP error also keeps its status number (`reason_status`), which the metrics
label carries (`grpc_13`).

Where a code is decided:
- results lines (`core.results`): GRPC_*/HTTP_* (per-line rpc errors, retryable or final),
  STATUS_* (a Vertex AI line's status text), PROMPT_BLOCKED, SAFETY, MAX_TOKENS, NO_IMAGE,
  MALFORMED; the harvest adds REFERENCE_GONE (a line's reference image expired), DUPLICATE
  (a billed extra line), CONFLICT (other bytes already stored), UNSTORED (a cancelled run's
  image not stored) and MISSING (a key absent from the results file);
- polling: BATCH_FAILED, BATCH_EXPIRED, BATCH_CANCELLED (a batch ended without output),
  RUN_CANCELLED;
- creating: CREATE_REFUSED (the service refused the batch), REFERENCE_UNSENT (a reference
  image could not be uploaded);
- the policy: FALLBACK_REFUSED (an item's fallback model cannot take its references);
- OTHER: a text recorded before codes existed that none of the rules recognise.
Waiting reasons (`Waiting`) have their own codes (`WaitCode`): backoff, live-batch limit,
enqueued-token quota, run budget, daily budget, held run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class ReasonCode(StrEnum):
    """Why an attempt (or an item) did not succeed; stored in `reason_code` columns."""

    GRPC_RETRYABLE = "grpc_retryable"  #: per-line gRPC error, retryable (2, 4, 8, 10, 13, 14)
    GRPC_FINAL = "grpc_final"  #: per-line gRPC error, final (3, 5, 7, 9, ...)
    HTTP_RETRYABLE = "http_retryable"  #: per-line HTTP error, retryable (429, 5xx)
    HTTP_FINAL = "http_final"  #: per-line HTTP error, final (4xx but 429)
    STATUS_RETRYABLE = "status_retryable"  #: Vertex AI line status text, retried
    STATUS_FINAL = "status_final"  #: Vertex AI line status text naming a 400-class error
    PROMPT_BLOCKED = "prompt_blocked"  #: promptFeedback.blockReason
    SAFETY = "safety"  #: a safety finishReason and no image
    MAX_TOKENS = "max_tokens"  #: no image, finishReason MAX_TOKENS
    NO_IMAGE = "no_image"  #: no image and no safety block
    MALFORMED = "malformed"  #: a line with neither response nor error
    REFERENCE_GONE = "reference_gone"  #: a reference image the line sent expired
    DUPLICATE = "duplicate"  #: a billed extra line for a key (Vertex AI)
    CONFLICT = "conflict"  #: different bytes already stored under the object name
    UNSTORED = "unstored"  #: the run was cancelled and its storage failed
    MISSING = "missing"  #: the key is missing from the results file
    BATCH_FAILED = "batch_failed"  #: the batch ended failed, without output
    BATCH_EXPIRED = "batch_expired"  #: the batch expired, without output
    BATCH_CANCELLED = "batch_cancelled"  #: the batch was cancelled, without output
    RUN_CANCELLED = "run_cancelled"  #: the run was cancelled
    CREATE_REFUSED = "create_refused"  #: the service refused to create the batch
    REFERENCE_UNSENT = "reference_unsent"  #: a reference image could not be uploaded
    FALLBACK_REFUSED = "fallback_refused"  #: the fallback model cannot take the references
    OTHER = "other"  #: recorded before codes, and no rule recognises its text


NO_FALLBACK: Final = frozenset({ReasonCode.SAFETY, ReasonCode.PROMPT_BLOCKED})
"""Codes for which fallback_model is not tried (CONTRACT section 6: safety blocks)."""

RPC_CODES: Final = frozenset(
    {
        ReasonCode.GRPC_RETRYABLE,
        ReasonCode.GRPC_FINAL,
        ReasonCode.HTTP_RETRYABLE,
        ReasonCode.HTTP_FINAL,
    }
)

_CLASS: Final[dict[ReasonCode, str]] = {
    ReasonCode.PROMPT_BLOCKED: "safety",
    ReasonCode.SAFETY: "safety",
    ReasonCode.MAX_TOKENS: "no_image",
    ReasonCode.NO_IMAGE: "no_image",
    ReasonCode.MALFORMED: "malformed",
    ReasonCode.CONFLICT: "conflict",
    ReasonCode.UNSTORED: "cancelled",
    ReasonCode.MISSING: "missing",
    ReasonCode.BATCH_FAILED: "batch_failed",
    ReasonCode.BATCH_EXPIRED: "batch_expired",
    ReasonCode.BATCH_CANCELLED: "batch_cancelled",
    ReasonCode.RUN_CANCELLED: "cancelled",
    ReasonCode.CREATE_REFUSED: "create_refused",
}
"""The metrics' error class of each code (README, Monitoring); rpc codes add their number,
every other code is `other` (the classes were fixed before the codes)."""


def error_class(code: str | None, status: int | None = None) -> str:
    """The metrics' error class (label `reason`) of a recorded attempt that did not succeed:
    grpc_<n> / http_<n> for per-line rpc errors, else the class of its code."""
    try:
        known = ReasonCode(code) if code is not None else ReasonCode.OTHER
    except ValueError:
        return "other"
    if known in RPC_CODES and status is not None:
        return f"{known.value.split('_')[0]}_{status}"
    return _CLASS.get(known, "other")


def rpc_code(protocol: str, retryable: bool) -> ReasonCode:
    """The code of a per-line error of this protocol (`grpc` or `http`)."""
    if protocol == "grpc":
        return ReasonCode.GRPC_RETRYABLE if retryable else ReasonCode.GRPC_FINAL
    return ReasonCode.HTTP_RETRYABLE if retryable else ReasonCode.HTTP_FINAL


BATCH_END: Final = {
    "failed": ReasonCode.BATCH_FAILED,
    "expired": ReasonCode.BATCH_EXPIRED,
    "cancelled": ReasonCode.BATCH_CANCELLED,
}
"""How a batch that ended without output is recorded, by the poll's outcome."""


# ── waiting ──────────────────────────────────────────────────────────────────


class WaitCode(StrEnum):
    """Why queued work is not sent now (`status --json` `waiting_code`)."""

    BACKOFF = "backoff"  #: the batch's create is backing off after an error
    LIVE_LIMIT = "live_limit"  #: as many batches are live as the service allows
    QUOTA = "quota"  #: the model's enqueued-token quota is used by live batches
    RUN_BUDGET = "run_budget"  #: the run's budget_usd would be passed
    DAILY_BUDGET = "daily_budget"  #: NANOBATCH_DAILY_BUDGET_USD would be passed
    HELD = "held"  #: the run is held (its storage, input or batches fail)


BUDGET_CODES: Final = frozenset({WaitCode.RUN_BUDGET, WaitCode.DAILY_BUDGET})


@dataclass(frozen=True)
class Waiting:
    """Why queued work waits: the code programs test, and the line users read."""

    code: WaitCode
    text: str

    @property
    def budget(self) -> bool:
        """A budget stops the work until someone raises it (or the day ends)."""
        return self.code in BUDGET_CODES

    def __str__(self) -> str:
        return self.text
