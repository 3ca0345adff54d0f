"""`nanobatch run` end to end on the emulator: the account, the files, and the money."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from e2e_checks import (
    ITEM_FIELDS,
    check_report_shape,
    final_image,
    line_tokens,
    sha256,
    tokens_cost,
)
from PIL import Image

from pipeline.emulator import FaultPlan, LineFault
from pipeline.emulator.models import pixel_size

ROWS = [
    {"sku": "mug-001", "title": "a ceramic mug", "colour": "teal", "aspect_ratio": ""},
    {"sku": "lamp-101", "title": "a brass lamp", "colour": "brass", "aspect_ratio": "16:9"},
    {"sku": "vase-301", "title": "a glass vase", "colour": "clear", "aspect_ratio": "3:4"},
    {"sku": "chair-201", "title": "an oak chair", "colour": "oak", "aspect_ratio": ""},
    {"sku": "stool-202", "title": "a steel stool", "colour": "", "aspect_ratio": ""},
    {"sku": "mug-001", "title": "a duplicate", "colour": "blue", "aspect_ratio": ""},
    {"sku": "bowl-401", "title": "a bowl", "colour": "white", "aspect_ratio": "7:5"},
]
GOOD = ["mug-001", "lamp-101", "vase-301", "chair-201"]
RATIOS = {"mug-001": "1:1", "lamp-101": "16:9", "vase-301": "3:4", "chair-201": "1:1"}
MANIFEST_EXTRA = ["prompt", "aspect_ratio", "image_size"]


def _by_key(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in items}


@pytest.mark.timeout(120)
def test_run_local_output_end_to_end(e2e_db: Any) -> None:
    """run writes images, manifest and rejects, and a contract-shaped report, on both DBs."""
    e2e = e2e_db
    e2e.write_csv(ROWS)
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()
    check_report_shape(report)
    assert report["job"] == "e2e-job"
    assert report["model"] == "gemini-3-pro-image-preview"
    items = _by_key(report["items"])
    assert sorted(items) == sorted(GOOD)
    summary = report["summary"]
    assert (summary["items"], summary["succeeded"], summary["failed"]) == (4, 4, 0)
    assert (summary["pending"], summary["rejected"]) == (0, 3)

    # The same account from `report RUN --format json` (and by job name).
    again = e2e.invoke("report", report["run"], "--format", "json")
    assert again.code == 0, again.stderr
    assert again.json() == report
    by_job = e2e.invoke("report", "e2e-job", "--format", "json")
    assert by_job.json() == report

    out_dir = e2e.tmp / "out" / "e2e-job"
    (date_dir,) = out_dir.iterdir()
    for key, item in items.items():
        assert item["status"] == "succeeded" and item["attempts"] == 1
        assert item["error"] is None and item["cached"] is False
        path = Path(item["uri"])
        assert path.is_absolute() and path.parent == date_dir.resolve()
        assert path.name == f"{key}.png"
        data = path.read_bytes()
        assert sha256(data) == item["sha256"]
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG"
            assert img.size == pixel_size(report["model"], RATIOS[key], "1K", 0.02)

    # manifest.parquet: the report's item fields plus prompt, aspect_ratio and image_size.
    manifest = pq.read_table(date_dir / "manifest.parquet").to_pylist()
    assert list(manifest[0]) == [*ITEM_FIELDS, *MANIFEST_EXTRA]
    by_key = _by_key(manifest)
    assert sorted(by_key) == sorted(GOOD)
    for key, row in by_key.items():
        for name in ITEM_FIELDS:
            if name == "cost_usd":
                assert row[name] == pytest.approx(items[key][name], abs=1e-9)
            else:
                assert row[name] == items[key][name], (key, name)
        assert row["aspect_ratio"] == RATIOS[key]
        assert row["image_size"] == "1K"
        assert row["prompt"].startswith("Studio photo of ")

    # rejects.csv: 1-based data rows, header not counted.
    with (date_dir / "rejects.csv").open(newline="", encoding="utf-8") as fh:
        rejects = list(csv.reader(fh))
    assert rejects[0] == ["row", "key", "reason"]
    assert [(r[0], r[1]) for r in rejects[1:]] == [
        ("5", "stool-202"),
        ("6", "mug-001"),
        ("7", "bowl-401"),
    ]
    assert "colour" in rejects[1][2]
    assert "duplicate" in rejects[2][2].lower() or "seen" in rejects[2][2].lower()
    assert "7:5" in rejects[3][2]


@pytest.mark.parametrize(
    ("model", "size"), [("gemini-3-pro-image-preview", "1K"), ("gemini-2.5-flash-image", "")]
)
def test_costs_match_the_emulators_usage(make_e2e: Any, model: str, size: str) -> None:
    """Tokens and costs in the report equal our own arithmetic over the raw results lines."""
    plan = FaultPlan(line_faults=[LineFault(kind="text_only", keys=["lamp-101"], times=1)])
    e2e = make_e2e(faults=plan)
    e2e.write_spec(model=model, size=size or "1K")
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()

    lines = e2e.result_lines()
    expected: dict[str, dict[str, int]] = {}
    images: dict[str, bytes] = {}
    for line in lines:
        tokens = line_tokens(line)
        acc = expected.setdefault(line["key"], dict.fromkeys(tokens, 0))
        for name, n in tokens.items():
            acc[name] += n
        parts = line["response"]["candidates"][0]["content"]["parts"]
        if any("inlineData" in p and not p.get("thought") for p in parts):
            images[line["key"]] = final_image(line)

    items = _by_key(report["items"])
    assert sorted(items) == sorted(GOOD)
    assert items["lamp-101"]["attempts"] == 2  # a text-only answer is retried
    assert sum(1 for line in lines if line["key"] == "lamp-101") == 2
    total_cost = Decimal(0)
    total_tokens = dict.fromkeys(("input", "output_image", "output_text", "thinking"), 0)
    for key, item in items.items():
        assert item["model"] == model
        for name, n in expected[key].items():
            assert item[name] == n, (key, name)
            total_tokens[name.removesuffix("_tokens")] += n
        cost = tokens_cost(model, expected[key])
        assert abs(Decimal(str(item["cost_usd"])) - cost) <= Decimal("1e-9"), key
        total_cost += cost
        # The stored object is the last non-thought image of the answer.
        assert item["sha256"] == sha256(images[key])
        assert Path(item["uri"]).read_bytes() == images[key]
    summary = report["summary"]
    assert summary["tokens"] == total_tokens
    assert abs(Decimal(str(summary["cost_usd"])) - total_cost) <= Decimal("1e-9")
    # Interactive prices are exactly twice the batch prices for these models.
    assert abs(Decimal(str(summary["standard_cost_usd"])) - 2 * total_cost) <= Decimal("1e-9")
    if model.startswith("gemini-3-pro"):
        assert all(expected[k]["thinking_tokens"] > 0 for k in GOOD)


def test_report_formats_carry_the_same_rows(e2e: Any, tmp_path: Path) -> None:
    """jsonl, csv and parquet hold the json report's item rows; table names every key."""
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()
    run_id = report["run"]
    rows = report["items"]

    jsonl = e2e.invoke("report", run_id, "--format", "jsonl")
    assert jsonl.code == 0, jsonl.stderr
    assert [json.loads(line) for line in jsonl.stdout.splitlines()] == rows

    as_csv = e2e.invoke("report", run_id, "--format", "csv")
    assert as_csv.code == 0, as_csv.stderr
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [list(r) for r in parsed] == [list(ITEM_FIELDS)] * len(rows)
    for got, want in zip(parsed, rows, strict=True):
        assert got["key"] == want["key"] and got["status"] == want["status"]
        assert got["uri"] == want["uri"] and got["sha256"] == want["sha256"]
        assert int(got["attempts"]) == want["attempts"]
        for name in ("input_tokens", "output_image_tokens", "output_text_tokens"):
            assert int(got[name]) == want[name]
        assert float(got["cost_usd"]) == pytest.approx(want["cost_usd"], abs=1e-9)

    out = tmp_path / "report.parquet"
    pq_result = e2e.invoke("report", run_id, "--format", "parquet", "--out", str(out))
    assert pq_result.code == 0, pq_result.stderr
    assert pq_result.stdout == ""
    table = pq.read_table(out)
    assert table.column_names == list(ITEM_FIELDS)
    assert table.to_pylist() == rows

    json_out = tmp_path / "report.json"
    to_file = e2e.invoke("report", run_id, "--format", "json", "--out", str(json_out))
    assert to_file.code == 0 and to_file.stdout == ""
    assert json.loads(json_out.read_text(encoding="utf-8")) == report

    table_result = e2e.invoke("report", run_id)
    assert table_result.code == 0, table_result.stderr
    for row in rows:
        assert row["key"] in table_result.stdout
    assert run_id in table_result.stdout


def test_run_exits_3_when_an_item_fails_for_good(make_e2e: Any) -> None:
    """A safety block fails its item for good (no retry, no file); run exits 3."""
    plan = FaultPlan(
        line_faults=[LineFault(kind="finish", reason="IMAGE_SAFETY", keys=["mug-001"])]
    )
    e2e = make_e2e(faults=plan)
    result = e2e.run("--json")
    assert result.code == 3, result.stderr
    report = result.json()
    check_report_shape(report)
    items = _by_key(report["items"])
    failed = items["mug-001"]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["uri"] is None and failed["sha256"] is None
    assert "IMAGE_SAFETY" in (failed["error"] or "")
    assert (report["summary"]["succeeded"], report["summary"]["failed"]) == (3, 1)
    served = [e["key"] for e in e2e.emu.request_log if e.get("kind") == "line"]
    assert served.count("mug-001") == 1
    (date_dir,) = (e2e.tmp / "out" / "e2e-job").iterdir()
    assert not (date_dir / "mug-001.png").exists()
