"""The CLI's surface: status, logs on stderr, results on stdout, secrets kept, db upgrade,
and one smoke test through a real `python -m pipeline` process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from e2e_checks import API_KEY, check_report_shape, check_status_shape


def test_status_json_and_job_name(e2e: Any) -> None:
    """status --json has the contract's shape before and after a run; RUN may be a job name."""
    empty = e2e.invoke("status", "--json")
    assert empty.code == 0, empty.stderr
    assert empty.json() == {"runs": []}

    submitted = e2e.invoke("submit", str(e2e.spec_path))
    run_id = submitted.stdout.strip()
    active = e2e.invoke("status", "--json").json()
    check_status_shape(active)
    (run,) = active["runs"]
    assert (run["run"], run["job"], run["state"]) == (run_id, "e2e-job", "active")
    assert run["items"]["pending"] == 4 and run["items"]["rejected"] == 1
    assert run["estimated_usd"] > 0

    done = e2e.run()
    assert done.code == 0, done.stderr
    for ref in (run_id, "e2e-job"):
        status = e2e.invoke("status", ref, "--json")
        assert status.code == 0, status.stderr
        data = status.json()
        check_status_shape(data)
        (run,) = data["runs"]
        assert run["run"] == run_id and run["state"] == "finished"
        items = run["items"]
        assert [items[k] for k in ("pending", "succeeded", "failed", "cancelled", "rejected")] == [
            0,
            4,
            0,
            0,
            1,
        ]
        assert run["batches"] and all(isinstance(v, int) for v in run["batches"].values())
        assert sum(run["batches"].values()) == 2
        assert run["cost_usd"] > 0 and run["waiting"] is None
    text = e2e.invoke("status", "e2e-job")
    assert text.code == 0 and run_id in text.stdout


def test_unknown_run_exits_2(e2e: Any) -> None:
    """report, status and retry of a run that does not exist exit 2 naming it."""
    for args in (("report", "no-such-run"), ("status", "no-such-run"), ("retry", "no-such-run")):
        result = e2e.invoke(*args)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert "no-such-run" in result.stderr
        assert result.stdout == ""


def test_stdout_results_stderr_json_logs_and_no_key_anywhere(e2e: Any) -> None:
    """stdout holds only results, every stderr line is JSON, and the key is never written."""
    e2e.monkeypatch.delenv("NANOBATCH_LOG_FORMAT")
    plain = e2e.invoke("--log-format", "console", "plan", str(e2e.spec_path), "--json")
    assert plain.code == 0 and plain.json()["items"] == 4
    submit = e2e.invoke("--log-format", "json", "submit", str(e2e.spec_path))
    assert submit.code == 0, submit.stderr
    run_id = submit.stdout.strip()
    assert submit.stdout == f"{run_id}\n"
    run = e2e.invoke("--log-format", "json", "run", str(e2e.spec_path), "--poll-interval", "0.05")
    assert run.code == 0, run.stderr
    assert run.stdout.startswith(f"run {run_id}")
    as_json = e2e.invoke(
        "--log-format", "json", "run", str(e2e.spec_path), "--poll-interval", "0.05", "--json"
    )
    check_report_shape(json.loads(as_json.stdout))
    for result in (submit, run, as_json):
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines or result is not submit
        for line in lines:
            event = json.loads(line)
            assert isinstance(event, dict) and "event" in event, line
    assert any(json.loads(x)["event"] == "run_created" for x in submit.stderr.splitlines())
    console = e2e.invoke("--log-format", "console", "submit", str(e2e.spec_path), "--force")
    assert console.code == 0, console.stderr
    assert console.stdout.strip().startswith("e2e-job-")
    assert "run_created" in console.stderr and not console.stderr.lstrip().startswith("{")

    # The key is in none of the outputs, nor in any file under the test's folder (ledger,
    # WAL, spool, images, manifest, rejects).
    secret = API_KEY.encode()
    for text in e2e.outputs:
        assert API_KEY not in text
    files = [p for p in e2e.tmp.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.parquet" for p in files)
    assert any(p.name.startswith("ledger.db") for p in files)
    for path in files:
        assert secret not in path.read_bytes(), path


def test_a_refused_key_is_not_echoed(e2e: Any) -> None:
    """A refused key exits 2 (fix the setting), names the variable, never shows the key."""
    wrong = "wrong-key-5e1d0c9b8a7f"
    e2e.monkeypatch.setenv("GEMINI_API_KEY", wrong)
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 2, (result.stdout, result.stderr)  # AuthError: a usage problem
    assert "GEMINI_API_KEY" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert "create" not in e2e.kinds()
    for path in (p for p in e2e.tmp.rglob("*") if p.is_file()):
        assert wrong.encode() not in path.read_bytes(), path


def test_db_upgrade_on_an_empty_database(e2e_empty_db: Any) -> None:
    """db upgrade creates the schema on an empty database (SQLite and PostgreSQL)."""
    e2e_db = e2e_empty_db
    result = e2e_db.invoke("db", "upgrade")
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    engine = sa.create_engine(e2e_db.db_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"runs", "items", "batches", "attempts"} <= tables, tables
    again = e2e_db.invoke("db", "upgrade")
    assert again.code == 0, again.stderr
    assert e2e_db.invoke("status", "--json").json() == {"runs": []}


def test_python_m_pipeline_help(e2e: Any) -> None:
    """`python -m pipeline --help` works in a fresh process and lists the commands."""
    result = e2e.subprocess("--help")
    assert result.code == 0, result.stderr
    for command in ("plan", "submit", "tick", "run", "status", "report", "retry", "cancel"):
        assert command in result.stdout


@pytest.mark.timeout(120)
def test_subprocess_run_smoke(e2e: Any, tmp_path: Path) -> None:
    """A real `python -m pipeline run --json` process against the emulator exits 0."""
    result = e2e.subprocess("run", str(e2e.spec_path), "--poll-interval", "0.05", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    check_report_shape(report)
    assert report["summary"]["succeeded"] == 4
    for line in result.stderr.splitlines():
        json.loads(line)  # NANOBATCH_LOG_FORMAT=json in the environment
    assert API_KEY not in result.stdout + result.stderr
    assert (tmp_path / "ledger.db").exists()
