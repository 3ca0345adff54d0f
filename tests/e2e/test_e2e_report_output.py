"""What `report` and `metrics` write: `--out` to a place that cannot be a file is a one-line
usage error (issue 13, item 10); CSV cells cannot become spreadsheet formulas, and the text
table shows control characters escaped and keeps distinct keys distinct (item 11)."""

from __future__ import annotations

from typing import Any

import pytest

FORMATS = ("table", "json", "jsonl", "csv", "parquet", "html")


def _one_line_usage_error(result: Any) -> str:
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def finished_run(e2e: Any) -> str:
    result = e2e.run()
    assert result.code == 0, result.stderr
    return str(result.stdout.split()[1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_out_into_a_missing_folder_exits_2(e2e: Any, finished_run: str, fmt: str) -> None:
    """`report --out` into a folder that does not exist: one line naming it, exit 2."""
    target = e2e.tmp / "no-such-folder" / f"report.{fmt}"
    line = _one_line_usage_error(
        e2e.invoke("report", finished_run, "--format", fmt, "--out", str(target))
    )
    assert "no-such-folder" in line and "does not exist" in line
    assert not target.parent.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_out_to_a_folder_exits_2(e2e: Any, finished_run: str, fmt: str) -> None:
    """`report --out` naming an existing folder: one line saying it is a folder, exit 2."""
    folder = e2e.tmp / "reports"
    folder.mkdir()
    line = _one_line_usage_error(
        e2e.invoke("report", finished_run, "--format", fmt, "--out", str(folder))
    )
    assert str(folder) in line and "folder" in line
    assert list(folder.iterdir()) == []


def test_metrics_out_into_a_missing_folder_or_a_folder_exits_2(e2e: Any) -> None:
    """`metrics --out` into a missing folder, or naming a folder: one line, exit 2."""
    missing = e2e.tmp / "no-such-folder" / "nanobatch.prom"
    line = _one_line_usage_error(e2e.invoke("metrics", "--out", str(missing)))
    assert "no-such-folder" in line and "does not exist" in line
    assert not missing.parent.exists()
    folder = e2e.tmp / "textfile"
    folder.mkdir()
    line = _one_line_usage_error(e2e.invoke("metrics", "--out", str(folder)))
    assert str(folder) in line and "folder" in line
    ok = e2e.invoke("metrics", "--out", str(folder / "nanobatch.prom"))
    assert ok.code == 0, ok.stderr
    assert "nanobatch_runs_active" in (folder / "nanobatch.prom").read_text()
