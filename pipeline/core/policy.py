"""What happens to an item after an attempt (CONTRACT section 6), as a pure decision:
succeed, try again, try once on the fallback model, or fail (for good or not). Also what
happens to a run whose own storage, input or batches fail: it is held (`HoldReason`) and
tried again after a backoff (`hold_delay`), while every other run goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pipeline.core.errors import ApiError, AuthError, InputError, StorageError, TransientApiError
from pipeline.core.reasons import NO_FALLBACK, ReasonCode

Outcome = Literal["succeeded", "retry", "final", "cancelled"]


@dataclass(frozen=True)
class Next:
    state: Literal["succeeded", "queued", "failed", "cancelled"]
    final: bool = False
    model: str | None = None
    """Set when the item moves to another model (the fallback)."""


def decide(
    outcome: Outcome,
    *,
    code: ReasonCode | None,
    tries_after: int,
    max_attempts: int,
    model: str,
    fallback_model: str | None,
    fallback_used: bool,
) -> Next:
    """The item's next state after an attempt with this outcome.

    Retryable outcomes go back to the queue while tries remain. An item failed for good for
    a reason other than safety (including running out of tries) gets one try on the
    fallback model; after that try, whatever fails is failed. Safety blocks (the codes in
    `reasons.NO_FALLBACK`) get no fallback and are failed for good.
    """
    safety = code in NO_FALLBACK
    if outcome == "succeeded":
        return Next("succeeded")
    if outcome == "cancelled":
        return Next("cancelled")
    if fallback_used:
        return Next("failed", final=outcome == "final" or safety)
    if outcome == "retry" and tries_after < max_attempts:
        return Next("queued")
    if fallback_model and fallback_model != model and not safety:
        return Next("queued", model=fallback_model)
    return Next("failed", final=outcome == "final")


# ── held runs ────────────────────────────────────────────────────────────────


class HoldReason(StrEnum):
    """Why a run is held: the reason code in the ledger, `status --json` and the metrics."""

    STORAGE = "storage"  #: its output location cannot be written (or read back)
    INPUT = "input"  #: its input (the table, reference images) cannot be read
    BATCHES = "batches"  #: the service refuses its batch files for good (a 4xx, not the key)


HOLD_FIRST_S = 60.0
"""The backoff before the first retry of a held run: about a minute (a cron tick or two)."""
HOLD_MAX_S = 1800.0
"""The longest backoff: a held run is retried at least every 30 minutes, far inside the 48 h
a results file stays downloadable (and its results are in the spool anyway)."""


def hold_reason(exc: BaseException) -> HoldReason | None:
    """The hold an error puts its run on, or None when the error is not the run's own.

    Not the run's own: the ledger, the spool disk, the key or a throttling service (they
    stop every run alike: the step fails), and bugs (they must surface).
    """
    if isinstance(exc, StorageError):
        return HoldReason.STORAGE
    if isinstance(exc, InputError):
        return HoldReason.INPUT
    if isinstance(exc, ApiError) and not isinstance(exc, TransientApiError | AuthError):
        return HoldReason.BATCHES
    return None


def hold_delay(tries: int, jitter: float) -> float:
    """Seconds from a held run's failed try number `tries` (1 = the one that held it) to its
    next try: doubling from HOLD_FIRST_S up to HOLD_MAX_S, the second half spread by `jitter`
    (0 <= jitter < 1) so runs held by one outage do not all come back in the same tick."""
    ceiling = min(HOLD_MAX_S, HOLD_FIRST_S * 2.0 ** max(0, min(tries - 1, 30)))
    return ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0)
