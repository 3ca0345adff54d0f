"""`run SPEC` after Ctrl-C (issue 13, item 7): Ctrl-C says how to resume and exits 130, and
`run SPEC` resumes the latest active run of that spec, even one started with --force after
an earlier run of the same spec finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from e2e_checks import API_KEY

from pipeline.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def slow(e2e_db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The end-to-end world (SQLite and PostgreSQL) on an emulator whose batches stay
    PENDING until the test pushes its clock on."""
    with Emulator(
        api_key=API_KEY, image_scale=0.02, pending_seconds=3600.0, running_seconds=1.0
    ) as emu:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
        e2e_db.emu = emu
        yield e2e_db


def _query(db_url: str, sql: str) -> list[Any]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


def _finish_by_ticks(e2e: Any, run: str) -> None:
    for _ in range(20):
        e2e.emu.clock.advance(7200)
        assert e2e.invoke("tick").code == 0
        if _query(e2e.db_url, f"SELECT state FROM runs WHERE id = '{run}'")[0][0] != "active":
            return
    raise AssertionError(f"run {run} did not finish")


def _run_then_interrupt(e2e: Any, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`nanobatch run SPEC ARGS` in a child; Ctrl-C (SIGINT) once its new run has a batch
    on the service. Returns the finished process and the interrupted run's id."""
    before = {r[0] for r in _query(e2e.db_url, "SELECT id FROM runs")}
    command = ["run", str(e2e.spec_path), "--poll-interval", "0.1", *args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *command],
        cwd=e2e.tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        run = None
        while run is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never got a batch on the service"
            time.sleep(0.1)
            rows = _query(
                e2e.db_url,
                "SELECT DISTINCT run_id FROM batches WHERE state = 'running'",
            )
            fresh = [r[0] for r in rows if r[0] not in before]
            run = fresh[0] if fresh else None
        time.sleep(0.3)  # let it reach the wait between ticks
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run


def test_ctrl_c_during_run_says_how_to_resume_and_exits_130(slow: Any) -> None:
    """Ctrl-C: exit 130, stderr names the run and the commands that resume it; the run stays
    active, and `run SPEC` resumes it to the end."""
    e2e = slow
    assert e2e.invoke("db", "upgrade").code == 0
    done, run = _run_then_interrupt(e2e)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "interrupted" in last and run in last
    assert f"nanobatch run {e2e.spec_path}" in last and "nanobatch tick" in last
    assert _query(e2e.db_url, f"SELECT state FROM runs WHERE id = '{run}'")[0][0] == "active"

    e2e.emu.clock.advance(7200)
    again = e2e.run("--json")
    assert again.code == 0, again.stderr[-2000:]
    assert again.json()["run"] == run
    assert again.json()["summary"]["succeeded"] == 4


def test_run_resumes_the_latest_active_run_not_an_older_finished_one(slow: Any) -> None:
    """`run SPEC` (finished), `run SPEC --force`, Ctrl-C, then `run SPEC`: the forced run is
    resumed and its report printed; `submit SPEC` still names the spec's first run."""
    e2e = slow
    # A folder per run: the forced run's images must not find the first run's under its names
    # (they would be taken, and fail before sending: CONTRACT section 6).
    e2e.write_spec(output="out/{job}/{run}")
    first = e2e.invoke("submit", str(e2e.spec_path)).stdout.strip()
    _finish_by_ticks(e2e, first)

    # --no-cache: otherwise the first run's images serve the forced run at once.
    done, forced = _run_then_interrupt(e2e, "--force", "--no-cache")
    assert done.returncode == 130, done.stderr[-2000:]
    assert forced != first

    e2e.emu.clock.advance(7200)
    again = e2e.run("--json")
    assert again.code == 0, again.stderr[-2000:]
    report = again.json()
    assert report["run"] == forced
    assert report["summary"]["succeeded"] == 4
    states = dict(_query(e2e.db_url, "SELECT id, state FROM runs"))
    assert states == {first: "finished", forced: "finished"}
    # submit keeps its contract: the same spec is the spec's first run, nothing new recorded.
    assert e2e.invoke("submit", str(e2e.spec_path)).stdout.strip() == first
