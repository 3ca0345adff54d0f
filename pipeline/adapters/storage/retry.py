"""Retrying transient storage failures with exponential backoff and jitter.

Owns the backoff schedule and the question "is this storage error worth another try?"
(429, 408, 5xx, dropped connections, timeouts). Lasting errors propagate at once.
"""

from __future__ import annotations

import http.client
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TRIES = 5
DEFAULT_BASE_DELAY = 0.2
DEFAULT_MAX_DELAY = 10.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed try number `attempt` (0-based): half fixed, half jitter."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retry_call(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    tries: int = DEFAULT_TRIES,
    base: float = DEFAULT_BASE_DELAY,
    cap: float = DEFAULT_MAX_DELAY,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Call `fn` until it returns, retrying transient errors up to `tries` calls in all.

    The last transient error is re-raised when the tries run out; any other error is
    raised at once.
    """
    rng = rng or random.Random()
    for attempt in range(tries):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= tries or not is_transient(exc):
                raise
            sleep(backoff_delay(attempt, base=base, cap=cap, rng=rng))
    raise AssertionError("unreachable: tries must be >= 1")


def is_transient_gcs_error(exc: BaseException) -> bool:
    """True for GCS errors worth retrying: 408/429/5xx answers, broken connections, timeouts."""
    import requests
    import urllib3
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud.storage.exceptions import InvalidResponse

    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in TRANSIENT_STATUS
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in TRANSIENT_STATUS
    if isinstance(exc, auth_exceptions.TransportError):
        return True  # the token endpoint could not be reached
    transient_types = (
        ConnectionError,
        TimeoutError,
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        http.client.HTTPException,
        urllib3.exceptions.HTTPError,
    )
    return isinstance(exc, transient_types)
