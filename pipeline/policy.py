"""What happens to an item after an attempt (CONTRACT section 6), as a pure decision:
succeed, try again, try once on the fallback model, or fail (for good or not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
    safety: bool,
    tries_after: int,
    max_attempts: int,
    model: str,
    fallback_model: str | None,
    fallback_used: bool,
) -> Next:
    """The item's next state after an attempt with this outcome.

    Retryable outcomes go back to the queue while tries remain. An item failed for good for
    a reason other than safety (including running out of tries) gets one try on the
    fallback model; after that try, whatever fails is failed.
    """
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
