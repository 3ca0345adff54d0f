"""What `report` and `metrics` write: `--out` to a place that cannot be a file is a one-line
usage error (issue 13, item 10); CSV cells cannot become spreadsheet formulas, and the text
table shows control characters escaped and keeps distinct keys distinct (item 11)."""

from __future__ import annotations

import csv
import io
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


FORMULA_KEYS = ['=HYPERLINK("http://x.test","y")', "+41", "-7", "@SUM(A1)", "\tlead", "\rlead"]
PLAIN_KEYS = ["mug-001", "a'quote", "x=1"]


def _rows(keys: list[str]) -> list[dict[str, str]]:
    return [{"sku": k, "title": f"thing {i}", "colour": "red"} for i, k in enumerate(keys)]


def test_csv_report_neutralises_formula_cells(e2e: Any) -> None:
    """Cells starting with = + - @ tab or CR get a leading ' in `report --format csv`; other
    cells, and the JSON report, keep the values as they are."""
    e2e.write_csv(_rows(FORMULA_KEYS + PLAIN_KEYS))
    e2e.write_spec(max_requests_per_batch=100)
    run = e2e.run("--json")
    assert run.code == 0, run.stderr
    run_id = run.json()["run"]
    raw = sorted(item["key"] for item in run.json()["items"])
    assert raw == sorted(FORMULA_KEYS + PLAIN_KEYS)
    result = e2e.invoke("report", run_id, "--format", "csv")
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline="")))
    keys = sorted(row["key"] for row in rows)
    assert keys == sorted(["'" + k for k in FORMULA_KEYS] + PLAIN_KEYS)
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert {row["status"] for row in rows} == {"succeeded"}
    assert all(float(row["cost_usd"]) > 0 for row in rows)


def test_table_escapes_control_characters_and_keeps_cut_keys_distinct(e2e: Any) -> None:
    """The text table never prints a control character from a key raw, and two keys that
    differ only after the column's width still show differently."""
    long_a = "a-very-long-product-identifier-0001"
    long_b = "a-very-long-product-identifier-0002"
    escape = "evil\x1b[2Jkey"
    bidi = "abc\u202edcba"
    e2e.write_csv(_rows([long_a, long_b, escape, bidi, "plain-key"]))
    e2e.write_spec(max_requests_per_batch=100)
    run = e2e.run()
    assert run.code == 0, run.stderr
    for text in (run.stdout, e2e.invoke("report", "e2e-job").stdout):
        assert "\x1b" not in text and "\u202e" not in text
        assert "evil\\x1b[2Jkey" in text and "abc\\u202edcba" in text
        lines = {line.split()[0]: line for line in text.splitlines()[2:] if line.strip()}
        shown = [k for k in lines if k.startswith("a-very-long")]
        assert len(shown) == 2 and shown[0] != shown[1], shown
        assert all(len(k) <= 28 for k in shown)
        assert "plain-key" in lines
