"""Quota scheduling: never more live than the enqueued-token quota or the live-batch cap;
queued batches go out as earlier ones finish; `status --json` says why work waits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_helpers import Drill, check_exactly_once

from pipeline.emulator import Emulator

LIVE = {"BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"}


@pytest.fixture
def slow_drill(tmp_path: Path, sqlite_url: str) -> Iterator[Drill]:
    """A Drill whose batches only finish when the test moves the emulator clock."""
    with Emulator(image_scale=0.02, pending_seconds=100, running_seconds=100) as emu:
        yield Drill(tmp_path, emu, sqlite_url)


def live_remote(drill: Drill) -> int:
    return sum(1 for b in drill.emu.batches() if b["state"] in LIVE)


def test_enqueued_token_quota_one_batch_at_a_time(slow_drill: Drill) -> None:
    """With room for one batch, one is live at a time and status explains the wait."""
    drill = slow_drill
    drill.write_spec(6, per_batch=2, max_tokens=3000)
    run = drill.submit()
    assert live_remote(drill) == 1
    status = drill.status(run)
    assert status["waiting"] and "quota" in status["waiting"], status
    assert status["waiting_code"] == "quota"
    for _ in range(20):
        res = drill.tick(advance=300)
        assert res.code == 0, res.err
        assert live_remote(drill) <= 1
        if drill.run_state(run) != "active":
            break
    check_exactly_once(drill, run, 6)
    assert len(drill.emu.batches()) == 3


def test_live_batch_cap(slow_drill: Drill, monkeypatch: pytest.MonkeyPatch) -> None:
    """The live-batch limit (made 2 here) is never exceeded; the rest waits and goes later."""
    import pipeline.shell.budget

    monkeypatch.setattr(pipeline.shell.budget, "LIVE_BATCH_LIMIT", 2)
    drill = slow_drill
    drill.write_spec(8, per_batch=1)
    run = drill.submit()
    assert live_remote(drill) == 2
    assert "batches are live" in (drill.status(run)["waiting"] or "")
    assert drill.status(run)["waiting_code"] == "live_limit"
    for _ in range(20):
        assert drill.tick(advance=300).code == 0
        assert live_remote(drill) <= 2
        if drill.run_state(run) != "active":
            break
    check_exactly_once(drill, run, 8)
