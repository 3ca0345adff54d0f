"""Held runs as a pure decision (issue 13 item 1): which errors hold their run, under which
reason code, and the backoff before the next try (doubling, bounded, jittered)."""

from __future__ import annotations

import pytest

from pipeline.adapters.storage import ObjectNotFound
from pipeline.core.errors import (
    ApiError,
    AuthError,
    InputError,
    ObjectConflict,
    StorageError,
    TransientApiError,
)
from pipeline.core.policy import HOLD_FIRST_S, HOLD_MAX_S, HoldReason, hold_delay, hold_reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (StorageError("cannot upload to gs://b"), HoldReason.STORAGE),
        (ObjectNotFound("gone"), HoldReason.STORAGE),
        (InputError("cannot read"), HoldReason.INPUT),
        (ApiError("Gemini API 404 file gone", code=404), HoldReason.BATCHES),
        (ApiError("Gemini API 400 too big", code=400), HoldReason.BATCHES),
    ],
)
def test_hold_reason_of_a_runs_own_errors(error: Exception, reason: HoldReason) -> None:
    assert hold_reason(error) is reason


@pytest.mark.parametrize(
    "error",
    [
        TransientApiError("Gemini API 503", code=503),  # the service: every run alike
        AuthError("bad key", code=401),  # the key: every run alike
        ObjectConflict("one item's name is taken"),  # an item's, not the run's
        OSError(28, "No space left on device"),  # the spool disk: the step's
        RuntimeError("a bug"),
    ],
)
def test_errors_that_are_not_a_runs_own_hold_nothing(error: Exception) -> None:
    assert hold_reason(error) is None


def test_hold_reason_codes_match_the_ledger_check() -> None:
    from pipeline.adapters.ledger.models import HOLD_REASONS

    assert [r.value for r in HoldReason] == HOLD_REASONS


def test_hold_delay_doubles_from_a_minute_to_at_most_half_an_hour() -> None:
    lows = [hold_delay(tries, 0.0) for tries in range(1, 10)]
    highs = [hold_delay(tries, 0.999999) for tries in range(1, 10)]
    assert lows[0] == HOLD_FIRST_S / 2 and highs[0] == pytest.approx(HOLD_FIRST_S)
    assert lows[1] == 2 * lows[0] and lows[2] == 4 * lows[0]
    assert max(highs) == pytest.approx(HOLD_MAX_S)
    assert lows == sorted(lows)
    assert hold_delay(10_000, 0.5) <= HOLD_MAX_S  # no overflow, still bounded


def test_hold_delay_jitter_spreads_the_second_half() -> None:
    delays = {round(hold_delay(3, j / 10), 6) for j in range(10)}
    assert len(delays) == 10
    assert min(delays) == 2 * HOLD_FIRST_S and max(delays) < 4 * HOLD_FIRST_S
