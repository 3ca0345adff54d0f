"""Monitoring: the ledger's numbers in the Prometheus text exposition format (for the
node_exporter textfile collector: `nanobatch metrics --out /var/lib/node_exporter/nanobatch.prom`
from cron, written to a temporary file and renamed), and the same numbers per run for
`status --json` (`metrics` key).

Series: items by run and state (active runs and the latest run of each job), batches by
state, active runs, held runs by reason and how long each has been held, cost and images
per model, cost per image, attempts and errors by
reason class, error rate by class, batch turnaround (created in the ledger -> finished) and
queue wait (created in the ledger -> submitted) as summaries over the last 24 hours, and
today's spend against the daily cap.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import RunMetricData
from pipeline.core.policy import HoldReason
from pipeline.core.reasons import error_class
from pipeline.core.states import BatchState
from pipeline.core.values import as_utc, day_start, nanos_to_usd, usd_to_nanos
from pipeline.shell.context import Context

ITEM_STATES = ("queued", "in_batch", "succeeded", "failed", "failed_final", "cancelled")
QUANTILES = (0.5, 0.99)
WINDOW = timedelta(hours=24)


# ── reason classes ───────────────────────────────────────────────────────────


def reason_class(outcome: str, code: str | None, status: int | None = None) -> str | None:
    """The error class of a recorded attempt (from its reason code), or None for a success.

    grpc_<code> / http_<code> (per-line errors), safety, missing (line missing from the
    results), no_image, batch_failed / batch_expired / batch_cancelled (batch ended without
    output), create_refused, conflict (different bytes already stored), cancelled, malformed,
    other (see `core.reasons.error_class`).
    """
    if outcome == "succeeded":
        return None
    return error_class(code, status)


# ── collecting ───────────────────────────────────────────────────────────────


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values; NaN when there are none."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(q * len(values)))
    return values[min(rank, len(values)) - 1]


def _durations(rows: Iterable[Any]) -> tuple[list[float], list[float]]:
    """(turnaround, queue wait) seconds, each sorted."""
    turnaround: list[float] = []
    wait: list[float] = []
    for row in rows:
        created = as_utc(row.created_at)
        if row.submitted_at is not None:
            wait.append(max(0.0, (as_utc(row.submitted_at) - created).total_seconds()))
        if row.finished_at is not None:
            turnaround.append(max(0.0, (as_utc(row.finished_at) - created).total_seconds()))
    return sorted(turnaround), sorted(wait)


def _errors(rows: Iterable[Any]) -> tuple[int, dict[str, int]]:
    """(recorded attempts, errors by class)."""
    total = 0
    by_class: dict[str, int] = {}
    for outcome, code, status, n in rows:
        total += int(n)
        name = reason_class(outcome, code, status)
        if name is not None:
            by_class[name] = by_class.get(name, 0) + int(n)
    return total, dict(sorted(by_class.items()))


def _summary(values: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}": round(quantile(values, q), 3) for q in QUANTILES}


def metrics_of(data: RunMetricData) -> dict[str, Any]:
    """A run's metrics from its rows."""
    models = {}
    for row in data.costs:
        images = int(row.images)
        models[row.model] = {
            "cost_usd": nanos_to_usd(int(row.cost_nanos)),
            "images": images,
            "cost_per_image_usd": nanos_to_usd(int(row.cost_nanos)) / images if images else None,
        }
    attempts, errors = _errors(data.attempt_reasons)
    duplicates, duplicate_cost = data.duplicates
    turnaround, wait = _durations(data.batch_times)

    def clean(d: dict[str, float]) -> dict[str, float | None]:
        return {k: (None if math.isnan(v) else v) for k, v in d.items()}

    return {
        "by_model": models,
        "attempts": attempts,
        "duplicates": {"lines": duplicates, "cost_usd": nanos_to_usd(duplicate_cost)},
        "errors": errors,
        "error_rate": {k: round(v / attempts, 6) for k, v in errors.items()} if attempts else {},
        "batch_turnaround_s": clean(_summary(turnaround)),
        "queue_wait_s": clean(_summary(wait)),
    }


# ── exposition ───────────────────────────────────────────────────────────────


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, **labels: str) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def summary(
        self, name: str, help_: str, values: list[float], family: bool = True, **labels: str
    ) -> None:
        if family:
            self.family(name, "summary", help_)
        for q in QUANTILES:
            self.sample(name, quantile(values, q), **labels, quantile=str(q))
        self.sample(f"{name}_sum", round(sum(values), 3), **labels)
        self.sample(f"{name}_count", len(values), **labels)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(ctx: Context) -> str:
    """Every metric, as Prometheus text exposition format (version 0.0.4)."""
    now = ctx.now()
    out = _Writer()
    snap = ctx.ledger.metrics_snapshot(now - WINDOW, day_start(now))
    runs = list(snap.runs)
    _items(out, runs, snap.items_by_run_state)
    _batches(out, snap.batch_counts)
    out.family("nanobatch_runs_active", "gauge", "Runs in state active.")
    out.sample("nanobatch_runs_active", sum(1 for r in runs if r.state == "active"))
    _held(out, runs, now)
    _costs(out, list(snap.data.costs))
    _error_metrics(out, *_errors(snap.data.attempt_reasons))
    _duplicates(out, *snap.data.duplicates)
    turnaround, wait = _durations(snap.data.batch_times)
    spent, reserved = snap.day_spend
    _webhook_metrics(out, list(snap.webhook_counts), snap.webhook_times)
    out.summary(
        "nanobatch_batch_turnaround_seconds",
        "Batch created in the ledger to finished on the service, last 24 hours.",
        turnaround,
    )
    out.summary(
        "nanobatch_batch_queue_wait_seconds",
        "Batch created in the ledger to submitted to the service, last 24 hours.",
        wait,
    )
    out.family("nanobatch_daily_spent_usd", "gauge", "Recorded cost today (UTC), all runs.")
    out.sample("nanobatch_daily_spent_usd", nanos_to_usd(spent))
    out.family("nanobatch_reserved_usd", "gauge", "Estimated cost of live, unharvested batches.")
    out.sample("nanobatch_reserved_usd", nanos_to_usd(reserved))
    cap = ctx.settings.daily_budget_usd
    if cap is not None:
        out.family("nanobatch_daily_budget_usd", "gauge", "NANOBATCH_DAILY_BUDGET_USD.")
        out.sample("nanobatch_daily_budget_usd", nanos_to_usd(usd_to_nanos(cap)))
    out.family("nanobatch_metrics_generated_seconds", "gauge", "When these metrics were made.")
    out.sample("nanobatch_metrics_generated_seconds", round(now.timestamp(), 3))
    return out.text()


def _items(out: _Writer, runs: list[repo.RunRow], rows: Iterable[Any]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for run_id, state, final, n in rows:
        name = "failed_final" if state == "failed" and final else state
        counts[(run_id, name)] = counts.get((run_id, name), 0) + int(n)
    out.family("nanobatch_items", "gauge", "Items by run and state.")
    for run in runs:
        for state in ITEM_STATES:
            out.sample(
                "nanobatch_items",
                counts.get((run.id, state), 0),
                run=run.id,
                job=run.job,
                state=state,
            )


def _held(out: _Writer, runs: list[repo.RunRow], now: datetime) -> None:
    """Held runs (CONTRACT section 6): a count per reason code, and each held run's age."""
    held = [r for r in runs if r.state == "active" and r.hold_reason is not None]
    out.family(
        "nanobatch_runs_held",
        "gauge",
        "Active runs held because their own storage, input or batch files fail, by reason.",
    )
    for reason in HoldReason:
        out.sample(
            "nanobatch_runs_held", sum(1 for r in held if r.hold_reason == reason), reason=reason
        )
    out.family("nanobatch_run_held_seconds", "gauge", "Seconds since each held run was held.")
    for run in held:
        since = as_utc(run.hold_since) if run.hold_since is not None else now
        out.sample(
            "nanobatch_run_held_seconds",
            round(max(0.0, (now - since).total_seconds()), 3),
            run=run.id,
            job=run.job,
            reason=str(run.hold_reason),
        )


def _batches(out: _Writer, counts: dict[str, int]) -> None:
    out.family("nanobatch_batches", "gauge", "Batches by state, all runs.")
    for state in BatchState:
        out.sample("nanobatch_batches", counts.get(state.value, 0), state=state.value)


def _costs(out: _Writer, rows: list[Any]) -> None:
    out.family("nanobatch_cost_usd_total", "counter", "Recorded cost at batch price by model, USD.")
    for row in rows:
        out.sample("nanobatch_cost_usd_total", nanos_to_usd(int(row.cost_nanos)), model=row.model)
    out.family("nanobatch_images_total", "counter", "Images made (succeeded attempts) by model.")
    for row in rows:
        out.sample("nanobatch_images_total", int(row.images), model=row.model)
    out.family("nanobatch_cost_per_image_usd", "gauge", "Average cost per image by model, USD.")
    for row in rows:
        images = int(row.images)
        value = nanos_to_usd(int(row.cost_nanos)) / images if images else math.nan
        out.sample("nanobatch_cost_per_image_usd", value, model=row.model)


def _error_metrics(out: _Writer, attempts: int, errors: dict[str, int]) -> None:
    out.family("nanobatch_attempts_total", "counter", "Recorded attempts, all outcomes.")
    out.sample("nanobatch_attempts_total", attempts)
    out.family(
        "nanobatch_attempt_errors_total", "counter", "Attempts that did not succeed, by class."
    )
    for name, n in errors.items():
        out.sample("nanobatch_attempt_errors_total", n, reason=name)
    out.family("nanobatch_error_rate", "gauge", "Share of recorded attempts failing, by class.")
    for name, n in errors.items():
        out.sample("nanobatch_error_rate", n / attempts if attempts else 0.0, reason=name)


def _duplicates(out: _Writer, lines: int, cost_nanos: int) -> None:
    """Billed duplicate lines: several results lines for one key (Vertex AI); each one's cost
    is in the account, none is a try (CONTRACT section 10)."""
    out.family(
        "nanobatch_duplicate_lines_total",
        "counter",
        "Billed results lines beyond the one that decided their item (not tries).",
    )
    out.sample("nanobatch_duplicate_lines_total", lines)
    out.family(
        "nanobatch_duplicate_cost_usd_total", "counter", "Cost of the billed duplicate lines, USD."
    )
    out.sample("nanobatch_duplicate_cost_usd_total", nanos_to_usd(cost_nanos))


def write_metrics(ctx: Context, out: Path | None) -> str:
    """Render the metrics; with `out`, write them atomically there (temp file + rename)."""
    text = render(ctx)
    if out is not None:
        write_atomic(out, text)
    return text


def write_atomic(out: Path, text: str) -> None:
    """Write `text` to `out` through a temporary file and a rename (readers never see half)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ── webhooks (issue 18) ──────────────────────────────────────────────────────


def end_to_stored(rows: Iterable[Any]) -> dict[str, list[float]]:
    """Seconds from a batch's end (the service's endTime, else when a poll saw it) to its last
    image stored (harvested), sorted, split by whether a webhook named it first."""
    by: dict[str, list[float]] = {"webhook": [], "poll": []}
    for row in rows:
        ended = row.ended_at or row.finished_at
        if ended is None:
            continue
        seconds = (as_utc(row.harvested_at) - as_utc(ended)).total_seconds()
        by["webhook" if row.via_webhook else "poll"].append(max(0.0, seconds))
    return {k: sorted(v) for k, v in by.items()}


def _webhook_metrics(out: _Writer, counts: Iterable[Any], stored: Iterable[Any]) -> None:
    out.family(
        "nanobatch_webhook_deliveries_total",
        "counter",
        "Webhook deliveries recorded by listen, by event and state (queued, done, ignored).",
    )
    for event, state, n in counts:
        out.sample("nanobatch_webhook_deliveries_total", n, event=event, state=state)
    name = "nanobatch_batch_end_to_stored_seconds"
    out.family(
        name,
        "summary",
        "Batch ended on the service to its last image stored, last 24 hours; via webhook "
        "when a delivery named it before it was harvested, else poll.",
    )
    for via, values in end_to_stored(stored).items():
        out.summary(name, "", values, family=False, via=via)


def listen_text(counters: dict[str, int], queue_depth: int) -> str:
    """The counters of one `listen` process (`listen --metrics-out`), Prometheus text."""
    from pipeline.adapters.delivery import REASONS

    out = _Writer()
    out.family(
        "nanobatch_listen_deliveries_total",
        "counter",
        "Deliveries verified by this listen: accepted (queued), duplicate, ignored.",
    )
    for result in ("accepted", "duplicate", "ignored"):
        out.sample("nanobatch_listen_deliveries_total", counters.get(result, 0), result=result)
    out.family("nanobatch_listen_refused_total", "counter", "Deliveries refused, by reason.")
    for reason in REASONS:
        value = counters.get(f"refused:{reason}", 0)
        out.sample("nanobatch_listen_refused_total", value, reason=reason)
    for name, key, help_ in (
        ("nanobatch_listen_batches_moved_total", "moved", "Batches moved on after a delivery."),
        ("nanobatch_listen_move_failures_total", "move_failed", "Moves that failed (retried)."),
        ("nanobatch_listen_queue_full_total", "queue_full", "Deliveries left for the refill."),
    ):
        out.family(name, "counter", help_)
        out.sample(name, counters.get(key, 0))
    out.family("nanobatch_listen_queue_depth", "gauge", "Batches waiting for a worker.")
    out.sample("nanobatch_listen_queue_depth", queue_depth)
    out.family("nanobatch_metrics_generated_seconds", "gauge", "When these metrics were made.")
    out.sample("nanobatch_metrics_generated_seconds", round(time.time(), 3))
    return out.text()
