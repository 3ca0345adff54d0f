"""`run`'s progress display on a terminal (pipeline.shell.progress): what it says, checked on a
recorded rich console (no timing asserts), and the time-left estimate's arithmetic."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.adapters.ledger import repo
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator
from pipeline.shell import progress
from pipeline.shell.progress import LiveBatch, RunProgress, Snapshot, estimate_left, render
from pipeline.shell.tick import tick
from tests.features.helpers import make_context, report_json, run_to_end, submit, write_job


def _console() -> Console:
    return Console(record=True, file=io.StringIO(), width=120, force_terminal=True)


def _text(console: Console) -> str:
    return console.export_text(styles=False)


def test_estimate_left_from_the_turnaround_so_far() -> None:
    """What the live batch with the most to go has left of the mean turnaround, plus one
    mean per further wave; nothing to say before a batch finished."""
    assert estimate_left([], [10.0], waves=3) is None
    assert estimate_left([100.0, 200.0], [], waves=0) == 0.0
    assert estimate_left([100.0, 200.0], [30.0, 120.0], waves=0) == 120.0  # 150 - 30
    assert estimate_left([100.0, 200.0], [30.0], waves=2) == 120.0 + 300.0
    assert estimate_left([60.0], [500.0], waves=1) == 60.0  # overdue batches count 0


def test_progress_render_shows_stored_cost_batches_and_time_left() -> None:
    """Images stored out of items, failures, cost against the estimate, each live batch's
    state, the queued ones, and the time left."""
    snap = Snapshot(
        run_id="shots-20260101-abcd",
        items=5,
        stored=3,
        failed=1,
        cost_usd=0.2016,
        estimated_usd=0.34,
        live=(
            LiveBatch(seq=2, state="running", remote_state="JOB_STATE_RUNNING", items=2, age_s=75),
            LiveBatch(seq=3, state="submitting", remote_state=None, items=1, age_s=None),
        ),
        queued_batches=4,
        left_s=90.0,
    )
    console = _console()
    console.print(render(snap, elapsed_s=3725))
    text = _text(console)
    assert "shots-20260101-abcd" in text
    assert "3/5 images stored, 1 failed" in text
    assert "$0.2016 spent of ~$0.3400" in text
    assert "1h02m elapsed, ~1m30s left" in text
    assert "batch 2" in text and "running (JOB_STATE_RUNNING)" in text and "1m15s" in text
    assert "batch 3" in text and "submitting" in text and "sending" in text
    assert "4 batches queued" in text


def test_progress_render_counts_batches_past_the_list_and_waits_for_a_turnaround() -> None:
    live = tuple(
        LiveBatch(seq=n, state="running", remote_state="JOB_STATE_PENDING", items=1, age_s=5)
        for n in range(progress.MAX_BATCH_ROWS + 3)
    )
    snap = Snapshot("r", 20, 0, 0, 0.0, 1.0, live, 0, None)
    console = _console()
    console.print(render(snap, elapsed_s=5))
    text = _text(console)
    assert "... and 3 more live batches" in text
    assert f"batch {progress.MAX_BATCH_ROWS - 1}" in text
    assert f"batch {progress.MAX_BATCH_ROWS} " not in text
    assert "time left: after the first batch" in text


def test_run_progress_follows_a_real_run(tmp_path: Path, emu: Emulator) -> None:
    """RunProgress reads the ledger: live batches with their remote state while they run,
    then every image stored, the run's real cost, and nothing left."""
    rows = [{"key": f"k-{i}", "prompt": f"shape {i}"} for i in range(5)]
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "prog", rows, per_batch=2))
    tick(ctx, load_catalog())
    console = _console()
    shown = RunProgress(ctx, run_id, console=console)
    try:
        with ctx.ledger.engine.connect() as conn:
            shown.show(repo.item_counts(conn, run_id))
        first = _text(console)
        assert f"{run_id}" in first and "0/5 images stored" in first
        for seq in (1, 2, 3):
            assert f"batch {seq}" in first
        assert "running (JOB_STATE_PENDING)" in first
        assert "time left: after the first batch" in first and "0%" in first

        run_to_end(ctx, emu, run_id)
        with ctx.ledger.engine.connect() as conn:
            counts = repo.item_counts(conn, run_id)
        # The finished batches' turnarounds are read: nothing live, nothing queued, 0 left.
        assert progress.snapshot(ctx, run_id, counts).left_s == 0.0
        shown.show(counts)
    finally:
        shown.close()
        shown.close()  # twice is fine
    last = _text(console)
    cost = report_json(ctx, run_id)["summary"]["cost_usd"]
    assert "5/5 images stored" in last
    assert f"${cost:.4f} spent" in last
    assert "100%" in last and "done" in last


@pytest.mark.parametrize("seconds", [0, 59, 61, 3599, 3601])
def test_duration_is_short(seconds: int) -> None:
    text = progress.duration(seconds)
    assert text == {0: "0s", 59: "59s", 61: "1m01s", 3599: "59m59s", 3601: "1h00m"}[seconds]
