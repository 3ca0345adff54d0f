"""Crash and concurrency drills on the Vertex AI channel: `nanobatch run` SIGKILLed at each
crash point from the request file's upload to the end of the harvest, then plain ticks finish
the run with every job created once, every image stored once and every line (billed
duplicates included) paid once; and ticks at once on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_kill import expire_leases
from vertex_helpers import VertexDrill, check_vertex_exactly_once

from pipeline.emulator import Emulator, FaultPlan

pytestmark = [pytest.mark.gcs, pytest.mark.slow]
N, PER_BATCH = 6, 2
DUPLICATES = {"keys": ["img-1", "img-4"], "extra": ["image", "text"]}

POINTS = [
    "submit.uploaded",
    "submit.intent",
    "submit.created",
    "submit.created:2",
    "poll.finished",
    "harvest.downloaded",
    "harvest.stored",
    "harvest.stored:2",
    "harvest.committed",
    "harvest.finish",
    "harvest.harvested",
]


@pytest.fixture
def vdrill(tmp_path: Path, sqlite_url: str, gcs_server: Any, gcs_env: str) -> Iterator[VertexDrill]:
    with Emulator(
        image_scale=0.02, pending_seconds=0.1, running_seconds=0.2, storage_host=gcs_server.url
    ) as emu:
        yield VertexDrill(tmp_path, emu, sqlite_url, bucket=gcs_env, gcs_url=gcs_server.url)


def check_duplicates_once(drill: VertexDrill) -> None:
    """Each billed duplicate line the emulator wrote is one duplicate row, no more."""
    billed = sum(
        1
        for e in drill.emu.request_log
        if e.get("kind") == "vertex_line" and e["outcome"].startswith("duplicate") and e["usage"]
    )
    rows = drill.query("SELECT count(*) FROM attempts WHERE duplicate > 0")[0][0]
    assert billed == 4 and rows == billed


@pytest.mark.parametrize("point", POINTS)
def test_vertex_kill_then_tick_is_exactly_once(vdrill: VertexDrill, point: str) -> None:
    vdrill.emu.faults = FaultPlan.from_dict({"vertex": {"duplicates": [DUPLICATES]}})
    vdrill.write_spec(N, per_batch=PER_BATCH)
    died = vdrill.sub(
        "run",
        str(vdrill.spec),
        "--poll-interval",
        "0.1",
        NANOBATCH_CRASH_AT=point,
        NANOBATCH_HARVEST_WORKERS="4",
        timeout=120,
    )
    assert died.code == -9, f"{point}: expected SIGKILL, got {died.code}\n{died.err[-3000:]}"
    run = vdrill.query("SELECT id FROM runs")[0][0]
    expire_leases(vdrill)
    vdrill.tick_until_done(run)
    check_vertex_exactly_once(vdrill, run, N)
    assert len(vdrill.jobs()) == N // PER_BATCH
    check_duplicates_once(vdrill)
    report = vdrill.report(run)
    assert report["summary"]["duplicates"] == 4
    assert all(item["attempts"] == 1 for item in report["items"])


def test_vertex_ticks_at_once(tmp_path: Path, db_url: str, gcs_server: Any, gcs_env: str) -> None:
    """Waves of concurrent ticks (SQLite and PostgreSQL) create each job once and harvest
    each prediction line once, duplicates included."""
    with Emulator(
        image_scale=0.02, pending_seconds=0.2, running_seconds=0.3, storage_host=gcs_server.url
    ) as emu:
        drill = VertexDrill(tmp_path, emu, db_url, bucket=gcs_env, gcs_url=gcs_server.url)
        emu.faults = FaultPlan.from_dict({"vertex": {"duplicates": [DUPLICATES]}})
        drill.write_spec(N, per_batch=PER_BATCH)
        run = drill.submit()
        for _ in range(10):
            procs = [drill.popen("tick") for _ in range(3)]
            for proc in procs:
                _out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-3000:]
                assert "Traceback" not in err, err[-3000:]
            if drill.run_state(run) != "active":
                break
        check_vertex_exactly_once(drill, run, N)
        assert len(emu.vertex_jobs()) == N // PER_BATCH
        check_duplicates_once(drill)
