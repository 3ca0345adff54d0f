"""Run notifications: when a run finishes, POST a JSON summary to NANOBATCH_NOTIFY_URL.

Sent at most once per run: the tick claims the run (`runs.notified_at`, a guarded update)
before sending, so overlapping ticks never send it twice. A few tries with short timeouts
and backoff; a dead or slow endpoint costs a tick at most a few seconds and never fails it
or the run (the failure is logged as `notify_failed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2

from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger, mask_text
from pipeline.core.values import nanos_to_usd
from pipeline.shell.context import Context

log = get_logger()
TRIES = 3
TIMEOUT_S = 3.0
BACKOFF_S = 0.5


def notify_finished(ctx: Context, sleep: Callable[[float], None] = time.sleep) -> int:
    """Notify every finished, not yet notified run; returns how many were delivered."""
    url = ctx.settings.notify_url
    if not url:
        return 0
    pending = ctx.ledger.runs_to_notify()
    delivered = 0
    for run in pending:
        if not ctx.ledger.mark_notified(run.id, ctx.now()):
            continue  # another tick claimed it
        if send(url, payload(ctx, run), sleep=sleep, run_id=run.id):
            delivered += 1
    return delivered


def payload(ctx: Context, run: repo.RunRow) -> dict[str, Any]:
    """The JSON body: run, job, state, item counts, cost (and the cache's savings)."""
    from pipeline.shell.reporting import run_status

    status = run_status(ctx, run)
    totals = ctx.ledger.cache_totals(run.id)
    saved, cached = totals.saved_nanos, totals.served
    return {
        "event": "run_finished",
        "run": run.id,
        "job": run.job,
        "state": status["state"],
        "model": run.model,
        "output": run.output_uri,
        "items": {**status["items"], "cached": cached},
        "cost_usd": status["cost_usd"],
        "estimated_usd": status["estimated_usd"],
        "saved_by_cache_usd": nanos_to_usd(saved),
        "created_at": status["created_at"],
        "finished_at": status["finished_at"],
    }


def send(
    url: str,
    body: dict[str, Any],
    *,
    sleep: Callable[[float], None] = time.sleep,
    run_id: str | None = None,
    tries: int = TRIES,
    timeout: float = TIMEOUT_S,
) -> bool:
    """POST `body` as JSON; retried on network errors and 429/5xx. True when a 2xx came back."""
    shown = origin(url)
    error = ""
    for attempt in range(1, tries + 1):
        try:
            response = httpx2.post(url, json=body, timeout=timeout)
        except Exception as exc:  # any network failure: never fail the tick for it
            error = f"{type(exc).__name__}: {mask_text(str(exc).replace(url, shown))}"
        else:
            if 200 <= response.status_code < 300:
                log.info("run_notified", run=run_id, url=shown, status=response.status_code)
                return True
            error = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # the endpoint refuses this body: trying again will not help
        if attempt < tries:
            sleep(BACKOFF_S * 2 ** (attempt - 1))
    log.warning("notify_failed", run=run_id, url=shown, error=error[:200], tries=attempt)
    return False


def origin(url: str) -> str:
    """Scheme and host (and port) of the URL: what logs may show. Paths and queries often
    carry tokens (`/hooks/T0K3N`, `?token=`), and user info a password."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparseable URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}"
