"""Hygiene of what nanobatch leaves on disk and says when a setting is wrong (issue 13,
item 13): private modes for the ledger, spool and state folder; no spool file left by a
cancelled run; a bad NANOBATCH_LOG_FORMAT, a missing database driver, an empty table and a
dead storage emulator each get a clear message and the right exit code."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files are world-readable unless made otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _spool_files(e2e: Any) -> list[Path]:
    spool = e2e.state_dir / "spool"
    return sorted(p for p in spool.iterdir() if p.is_file()) if spool.exists() else []


def _slow_quota(e2e: Any) -> None:
    """One batch of two items fits the enqueued-token quota; the second batch waits queued
    (its request file stays in the spool)."""
    e2e.write_spec(max_requests_per_batch=2, max_enqueued_tokens=3000)


def test_ledger_spool_and_state_folder_are_private(e2e: Any, umask_022: None) -> None:
    """Under umask 022 the state folder and spool are 0700, the ledger and spool files 0600."""
    e2e.monkeypatch.delenv("NANOBATCH_DATABASE_URL")
    e2e.monkeypatch.delenv("NANOBATCH_STATE_DIR")
    _slow_quota(e2e)
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 0, result.stderr
    state = e2e.tmp / ".nanobatch"
    assert _mode(state) == 0o700
    assert _mode(state / "spool") == 0o700
    ledger = [p for p in state.iterdir() if p.name.startswith("ledger.db")]
    assert state / "ledger.db" in ledger
    for path in ledger:
        assert _mode(path) == 0o600, path
    files = [p for p in (state / "spool").iterdir() if p.is_file()]
    assert files, "a queued batch's request file is in the spool"
    for path in files:
        assert _mode(path) == 0o600, path


def test_spool_files_of_every_kind_are_private(e2e: Any, umask_022: None) -> None:
    """Request files built again at upload and results downloaded at harvest are 0600 too
    (seen through the spool folder while a run goes on)."""
    seen: dict[str, int] = {}
    real_unlink = Path.unlink

    def watching_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.parent.name == "spool" and self.exists():
            seen[self.name] = _mode(self)
        real_unlink(self, missing_ok=missing_ok)

    e2e.monkeypatch.setattr(Path, "unlink", watching_unlink)
    (e2e.state_dir / "spool").mkdir(parents=True)  # made by hand: its mode is the user's
    e2e.write_spec(max_requests_per_batch=1)
    result = e2e.run()
    assert result.code == 0, result.stderr
    assert any(name.endswith(".input.jsonl") for name in seen), seen
    assert any(name.endswith(".results.jsonl") for name in seen), seen
    assert set(seen.values()) == {0o600}, seen


def test_a_cancelled_run_leaves_no_spool_file(e2e_db: Any) -> None:
    """`cancel` removes the request files of the run's batches that will never be sent."""
    e2e = e2e_db
    _slow_quota(e2e)
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 0, result.stderr
    run_id = result.stdout.strip()
    assert [p.name for p in _spool_files(e2e)], "the queued batch's request file is there"
    cancel = e2e.invoke("cancel", run_id)
    assert cancel.code == 0, cancel.stderr
    assert _spool_files(e2e) == []
    assert e2e.invoke("status", run_id, "--json").json()["runs"][0]["state"] == "cancelled"


def test_a_bad_log_format_variable_exits_2(e2e: Any) -> None:
    """NANOBATCH_LOG_FORMAT=xml is refused, naming the variable and the valid values."""
    e2e.monkeypatch.setenv("NANOBATCH_LOG_FORMAT", "xml")
    result = e2e.invoke("status")
    assert result.code == 2, (result.stdout, result.stderr)
    assert "NANOBATCH_LOG_FORMAT" in result.stderr and "'xml'" in result.stderr
    assert "auto, console, json" in result.stderr
    e2e.monkeypatch.setenv("NANOBATCH_LOG_FORMAT", "JSON")
    assert e2e.invoke("status").code == 0


@pytest.mark.parametrize(
    ("url", "module", "package"),
    [
        ("mysql://nb:pw-s3cret@db.test/nanobatch", "MySQLdb", "mysqlclient"),
        ("mysql+pymysql://nb:pw-s3cret@db.test/nanobatch", "pymysql", "PyMySQL"),
        ("postgresql+psycopg2://nb:pw-s3cret@db.test/nanobatch", "psycopg2", "psycopg2"),
        ("mssql+pyodbc://nb:pw-s3cret@db.test/nanobatch", "pyodbc", "pyodbc"),
    ],
)
def test_a_missing_database_driver_is_named(e2e: Any, url: str, module: str, package: str) -> None:
    """A URL whose DBAPI driver is not installed exits 2 naming the module and its package."""
    e2e.monkeypatch.setenv("NANOBATCH_DATABASE_URL", url)
    result = e2e.invoke("status")
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "pw-s3cret" not in result.stderr
    assert f"'{module}'" in result.stderr and f"pip install {package}" in result.stderr


def test_a_header_only_table_is_nothing_to_do(e2e: Any) -> None:
    """plan, submit and run of a table with no data rows exit 2 saying there is nothing to
    do; no run is recorded and nothing is sent."""
    e2e.csv_path.write_text("sku,title,colour,aspect_ratio\n", encoding="utf-8")
    for args in (("plan", e2e.spec_path), ("submit", e2e.spec_path), ("run", e2e.spec_path)):
        result = e2e.invoke(*args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert "no data rows" in result.stderr and "nothing to do" in result.stderr
        assert str(e2e.csv_path.name) in result.stderr
    assert e2e.invoke("status", "--json").json() == {"runs": []}
    # submit's and run's key check lists one batch before recording; nothing is sent.
    assert [k for k in e2e.kinds() if k != "list"] == []


def test_a_table_whose_rows_are_all_rejected_is_nothing_to_do(e2e: Any) -> None:
    """When every row is rejected, plan lists the rejects and exits 2; submit records no run."""
    e2e.write_csv([{"sku": "a", "title": "x", "colour": ""}, {"sku": "", "title": "y"}])
    plan = e2e.invoke("plan", e2e.spec_path)
    assert plan.code == 2, (plan.stdout, plan.stderr)
    assert "rejected row 1" in plan.stdout and "rejected row 2" in plan.stdout
    assert "all 2 rows are rejected" in plan.stderr and "nothing to do" in plan.stderr
    submit = e2e.invoke("submit", e2e.spec_path)
    assert submit.code == 2 and "nothing to do" in submit.stderr
    assert e2e.invoke("status", "--json").json() == {"runs": []}


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
def test_a_dead_storage_emulator_at_submit_says_nothing_was_recorded(e2e: Any) -> None:
    """submit to gs:// with STORAGE_EMULATOR_HOST pointing nowhere exits 1 saying nothing was
    recorded or spent and what to check, never that work stays harvestable."""
    host = f"http://127.0.0.1:{_dead_port()}"
    e2e.monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    e2e.write_spec(output="gs://nanobatch-test-bucket/{job}")
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 1, (result.stdout, result.stderr)
    message = result.stderr.lower()
    assert "harvestable" not in message and "tick" not in message
    assert "nothing was recorded" in message and "nothing was spent" in message
    assert f"storage_emulator_host={host}" in message
    assert e2e.invoke("status", "--json").json() == {"runs": []}
    assert e2e.kinds() == []
