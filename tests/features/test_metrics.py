"""Monitoring: `nanobatch metrics` speaks the Prometheus text format with items, batches,
cost, errors by class and latency; `status --json` carries the same numbers per run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from pipeline.adapters.ledger import repo
from pipeline.core.reasons import ReasonCode
from pipeline.emulator import Emulator, FaultPlan, LineFault
from pipeline.shell.metrics import reason_class, write_metrics
from pipeline.shell.reporting import run_status
from tests.features.helpers import PRO, make_context, report_json, run_to_end, submit, write_job

ROWS = [
    {"key": "ok1", "prompt": "a calm lake"},
    {"key": "ok2", "prompt": "a quiet forest"},
    {"key": "bad", "prompt": "an invalid request"},
    {"key": "unsafe", "prompt": "something blocked"},
    {"key": "flaky", "prompt": "a stormy sea"},
]


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def _value(samples: list[Any], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


@pytest.fixture
def finished(tmp_path: Path, emu: Emulator) -> tuple[Any, str]:
    emu.faults = FaultPlan(
        line_faults=[
            LineFault(kind="error", code=3, keys=["bad"]),
            LineFault(kind="finish", reason="IMAGE_SAFETY", keys=["unsafe"]),
            LineFault(kind="error", code=13, keys=["flaky"], times=1),
        ]
    )
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "watched", ROWS, per_batch=2))
    run_to_end(ctx, emu, run_id)
    return ctx, run_id


def test_metrics_file_parses_with_every_family(finished: tuple[Any, str], tmp_path: Path) -> None:
    """--out writes parseable exposition text with items, batches, cost, errors, latency."""
    ctx, run_id = finished
    out = tmp_path / "textfile" / "nanobatch.prom"
    text = write_metrics(ctx, out)
    assert out.read_text() == text and not list(out.parent.glob(".*tmp"))
    m = _samples(text)
    items = m["nanobatch_items"]
    assert _value(items, "nanobatch_items", run=run_id, job="watched", state="succeeded") == 3
    assert _value(items, "nanobatch_items", run=run_id, job="watched", state="failed_final") == 2
    assert _value(m["nanobatch_batches"], "nanobatch_batches", state="harvested") >= 3
    assert _value(m["nanobatch_runs_active"], "nanobatch_runs_active") == 0
    report = report_json(ctx, run_id)
    cost = _value(m["nanobatch_cost_usd"], "nanobatch_cost_usd_total", model=PRO)
    assert cost == pytest.approx(report["summary"]["cost_usd"])
    per_image = _value(m["nanobatch_cost_per_image_usd"], "nanobatch_cost_per_image_usd", model=PRO)
    assert per_image == pytest.approx(cost / 3)
    errors = m["nanobatch_attempt_errors"]
    assert _value(errors, "nanobatch_attempt_errors_total", reason="grpc_3") == 1
    assert _value(errors, "nanobatch_attempt_errors_total", reason="grpc_13") == 1
    assert _value(errors, "nanobatch_attempt_errors_total", reason="safety") == 1
    attempts = _value(m["nanobatch_attempts"], "nanobatch_attempts_total")
    assert attempts == 6
    rate = _value(m["nanobatch_error_rate"], "nanobatch_error_rate", reason="safety")
    assert rate == pytest.approx(1 / 6)
    turnaround = m["nanobatch_batch_turnaround_seconds"]
    assert _value(turnaround, "nanobatch_batch_turnaround_seconds", quantile="0.5") >= 0
    assert _value(turnaround, "nanobatch_batch_turnaround_seconds_count") >= 3
    wait = m["nanobatch_batch_queue_wait_seconds"]
    assert not math.isnan(_value(wait, "nanobatch_batch_queue_wait_seconds", quantile="0.99"))
    assert _value(m["nanobatch_daily_spent_usd"], "nanobatch_daily_spent_usd") == pytest.approx(
        cost
    )


def test_status_json_carries_run_metrics(finished: tuple[Any, str]) -> None:
    """status --json has a metrics key per run with cost, error classes and latency."""
    ctx, run_id = finished
    with ctx.ledger.engine.connect() as conn:
        status = run_status(ctx, repo.get_run(conn, run_id))
    metrics = status["metrics"]
    assert metrics["attempts"] == 6
    assert metrics["errors"] == {"grpc_13": 1, "grpc_3": 1, "safety": 1}
    assert metrics["by_model"][PRO]["images"] == 3
    assert metrics["by_model"][PRO]["cost_usd"] == pytest.approx(status["cost_usd"])
    assert metrics["batch_turnaround_s"]["p50"] is not None
    assert metrics["queue_wait_s"]["p99"] is not None


def test_cli_metrics_command(
    finished: tuple[Any, str], monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path
) -> None:
    """`nanobatch metrics` prints to stdout, or writes --out FILE."""
    from pipeline.cli import main

    ctx, _ = finished
    monkeypatch.setenv("NANOBATCH_DATABASE_URL", ctx.settings.database_url)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["metrics"])
    assert done.value.code == 0
    assert "nanobatch_items" in _samples(capsys.readouterr().out)
    out = tmp_path / "m.prom"
    with pytest.raises(SystemExit):
        main(["metrics", "--out", str(out)])
    assert "nanobatch_batches" in _samples(out.read_text())


@pytest.mark.parametrize(
    ("outcome", "code", "status", "expected"),
    [
        ("succeeded", None, None, None),
        ("retry", ReasonCode.GRPC_RETRYABLE, 14, "grpc_14"),
        ("final", ReasonCode.HTTP_FINAL, 400, "http_400"),
        ("final", ReasonCode.SAFETY, None, "safety"),
        ("final", ReasonCode.PROMPT_BLOCKED, None, "safety"),
        ("retry", ReasonCode.MISSING, None, "missing"),
        ("retry", ReasonCode.BATCH_FAILED, None, "batch_failed"),
        ("retry", ReasonCode.BATCH_EXPIRED, None, "batch_expired"),
        ("retry", ReasonCode.NO_IMAGE, None, "no_image"),
        ("retry", ReasonCode.MAX_TOKENS, None, "no_image"),
        ("not_sent", ReasonCode.CREATE_REFUSED, None, "create_refused"),
        ("cancelled", ReasonCode.RUN_CANCELLED, None, "cancelled"),
        ("cancelled", ReasonCode.UNSTORED, None, "cancelled"),
        ("final", ReasonCode.CONFLICT, None, "conflict"),
        ("retry", ReasonCode.STATUS_RETRYABLE, None, "other"),
        ("retry", "a code from a newer version", None, "other"),
    ],
)
def test_reason_classes(outcome: str, code: str | None, status: int | None, expected: str) -> None:
    """Attempt reason codes fold into a few error classes (the text is not read)."""
    assert reason_class(outcome, code, status) == expected


def test_error_classes_come_from_the_code_column(finished: tuple[Any, str]) -> None:
    """The recorded attempts carry the codes the classes are made of."""
    ctx, run_id = finished
    with ctx.ledger.engine.connect() as conn:
        rows = {(r[0], r[1], r[2]) for r in repo.attempt_reasons(conn, run_id)}
    assert ("final", "grpc_final", 3) in rows
    assert ("retry", "grpc_retryable", 13) in rows
    assert ("final", "safety", None) in rows
    assert ("succeeded", None, None) in rows
    with ctx.ledger.engine.connect() as conn:
        uncoded = conn.execute(
            text(
                "SELECT count(*) FROM attempts WHERE outcome <> 'succeeded' AND reason_code IS NULL"
            )
        ).scalar()
        items = conn.execute(text("SELECT key, reason_code FROM items ORDER BY key")).all()
    assert uncoded == 0
    assert dict(items) == {
        "bad": "grpc_final",
        "flaky": None,
        "ok1": None,
        "ok2": None,
        "unsafe": "safety",
    }
