"""Faults on the Vertex AI channel (CONTRACT sections 6 and 10), the CLI against the emulator's
batch prediction routes and fake-gcs-server, checked item by item: per-line `status` errors,
partial success, jobs that end FAILED, CANCELLED or EXPIRED with or without output, create
429/503, lost create answers, missing lines, and `cancel`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_helpers import line_cost_nanos
from vertex_helpers import VertexDrill, check_vertex_exactly_once

from pipeline.emulator import Emulator, FaultPlan

pytestmark = pytest.mark.gcs


@pytest.fixture
def vdrill(tmp_path: Path, sqlite_url: str, gcs_server: Any, gcs_env: str) -> Iterator[VertexDrill]:
    bucket = gcs_env
    with Emulator(
        image_scale=0.02, pending_seconds=0.1, running_seconds=0.2, storage_host=gcs_server.url
    ) as emu:
        yield VertexDrill(tmp_path, emu, sqlite_url, bucket=bucket, gcs_url=gcs_server.url)


def vertex_faults(**faults: Any) -> FaultPlan:
    return FaultPlan.from_dict({"vertex": faults})


def run_to_end(drill: VertexDrill, n: int = 4, **spec: Any) -> str:
    drill.write_spec(n, **spec)
    run = drill.submit()
    drill.tick_until_done(run)
    return run


def tries(drill: VertexDrill) -> dict[str, int]:
    return {k: r.tries for k, r in drill.items().items()}


def test_vertex_run_is_exactly_once(vdrill: VertexDrill) -> None:
    run = run_to_end(vdrill, 4)
    check_vertex_exactly_once(vdrill, run, 4)
    assert len(vdrill.jobs()) == 2


@pytest.mark.parametrize("status", [429, 503])
def test_vertex_create_errors_back_off_then_create_once(vdrill: VertexDrill, status: int) -> None:
    vdrill.emu.faults = vertex_faults(create_errors=[{"status": status, "times": 2}])
    vdrill.write_spec(4)
    run = vdrill.submit()
    backed = vdrill.query("SELECT last_error FROM batches WHERE not_before IS NOT NULL")
    assert backed and f"Vertex AI {status}" in backed[0].last_error
    vdrill.tick_until_done(run)
    check_vertex_exactly_once(vdrill, run, 4)
    refused = [
        e for e in vdrill.emu.request_log if e["kind"] == "vertex_create" and e["status"] != 200
    ]
    assert [e["status"] for e in refused] == [status, status]


def test_vertex_lost_create_answer_is_reconciled_by_display_name(vdrill: VertexDrill) -> None:
    """A create that took effect but whose answer was lost: the batch waits in `submitting`,
    and the next tick adopts the job it finds by display name instead of creating another."""
    vdrill.emu.faults = vertex_faults(lost_creates=1)
    vdrill.write_spec(4)
    run = vdrill.submit()
    assert vdrill.creates()[0]["status"] == "lost"
    assert vdrill.query("SELECT state FROM batches ORDER BY seq")[0][0] == "submitting"
    vdrill.tick_until_done(run)
    check_vertex_exactly_once(vdrill, run, 4)
    assert len(vdrill.jobs()) == 2
    how = vdrill.query(
        "SELECT detail FROM events WHERE to_state = 'running' AND batch_id IS NOT NULL"
    )
    assert sorted(d for (d,) in how) == ["created", "reconciled by display name"]


def test_vertex_line_status_errors(vdrill: VertexDrill) -> None:
    """A non-empty status: a 400-class one fails the item for good after one try; any other
    is retried up to max_attempts (with the status as the reason)."""
    vdrill.emu.faults = vertex_faults(
        line_errors=[
            {"keys": ["img-0"], "status": "UNAVAILABLE: the model is overloaded"},
            {"keys": ["img-1"], "status": '{"error": {"code": 400, "status": "INVALID_ARGUMENT"}}'},
            {"keys": ["img-2"], "status": "RESOURCE_EXHAUSTED", "times": 1},
            {"keys": ["img-3"], "status": "PERMISSION_DENIED: cannot read gs://x"},
        ]
    )
    run_to_end(vdrill, 5, max_attempts=3)
    items = vdrill.items()
    assert (items["img-0"].state, items["img-0"].final, items["img-0"].tries) == (
        "failed",
        False,
        3,
    )
    assert "UNAVAILABLE" in items["img-0"].error
    assert (items["img-1"].state, items["img-1"].final, items["img-1"].tries) == ("failed", True, 1)
    assert "INVALID_ARGUMENT" in items["img-1"].error
    assert (items["img-2"].state, items["img-2"].tries) == ("succeeded", 2)
    assert (items["img-3"].state, items["img-3"].final) == ("failed", True)
    assert (items["img-4"].state, items["img-4"].tries) == ("succeeded", 1)


def test_vertex_partially_succeeded_is_harvested_and_the_rest_retried(vdrill: VertexDrill) -> None:
    """JOB_STATE_PARTIALLY_SUCCEEDED (BatchJob.done is False for it) ends the batch: its
    lines are harvested, items without a line go into a new batch."""
    vdrill.emu.faults = vertex_faults(
        job_faults=[{"state": "PARTIALLY_SUCCEEDED", "keep": 1, "next": 1}]
    )
    run = run_to_end(vdrill, 4)
    check_vertex_exactly_once(vdrill, run, 4)
    assert sorted(tries(vdrill).values()) == [1, 1, 1, 2]
    assert vdrill.jobs()[0]["state"] == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert len(vdrill.jobs()) == 3


@pytest.mark.parametrize("state", ["FAILED", "CANCELLED", "EXPIRED"])
def test_vertex_job_ending_with_some_output_is_harvested(vdrill: VertexDrill, state: str) -> None:
    vdrill.emu.faults = vertex_faults(job_faults=[{"state": state, "keep": 1, "next": 1}])
    run = run_to_end(vdrill, 4)
    check_vertex_exactly_once(vdrill, run, 4)
    assert sorted(tries(vdrill).values()) == [1, 1, 1, 2]
    assert vdrill.jobs()[0]["state"] == f"JOB_STATE_{state}"


@pytest.mark.parametrize("state", ["FAILED", "EXPIRED"])
def test_vertex_job_ending_without_output_is_retried(vdrill: VertexDrill, state: str) -> None:
    vdrill.emu.faults = vertex_faults(job_faults=[{"state": state, "keep": 0, "next": 1}])
    run = run_to_end(vdrill, 4)
    check_vertex_exactly_once(vdrill, run, 4)
    assert sorted(tries(vdrill).values()) == [1, 1, 2, 2]
    assert vdrill.jobs()[0]["outputDir"] is None


def test_vertex_missing_lines_are_retried(vdrill: VertexDrill) -> None:
    vdrill.emu.faults = vertex_faults(missing=[{"keys": ["img-1"], "times": 1}])
    run = run_to_end(vdrill, 4)
    check_vertex_exactly_once(vdrill, run, 4)
    assert tries(vdrill)["img-1"] == 2


def test_vertex_cancel_mid_flight_harvests_completed_rows(
    tmp_path: Path, sqlite_url: str, gcs_server: Any, gcs_env: str
) -> None:
    """`cancel` cancels the live job; the rows it completed are harvested and paid for, the
    items left without a line are cancelled."""
    bucket = gcs_env
    with Emulator(
        image_scale=0.02, pending_seconds=0, running_seconds=100, storage_host=gcs_server.url
    ) as emu:
        drill = VertexDrill(tmp_path, emu, sqlite_url, bucket=bucket, gcs_url=gcs_server.url)
        drill.write_spec(4, per_batch=4)
        run = drill.submit()
        emu.clock.advance(50)  # half-way: two of the four rows are done
        result = drill.cli("cancel", run)
        assert result.code == 0, result.err
        items = drill.items()
        assert sorted(r.state for r in items.values()) == [
            "cancelled",
            "cancelled",
            "succeeded",
            "succeeded",
        ]
        assert drill.jobs()[0]["state"] == "JOB_STATE_CANCELLED"
        expected = sum(line_cost_nanos(line) for line in drill.result_lines())
        report = drill.report(run)
        assert expected > 0
        assert round(report["summary"]["cost_usd"], 9) == round(expected / 1e9, 9)
        assert drill.run_state(run) == "cancelled"
