"""Several prediction lines for one key on Vertex AI (CONTRACT section 10): reading the job's
output files in name order and each file in line order, the first line with an image wins
(if none has one, the first line decides); every other line that carries usage is a billed
duplicate, in the item's and the summary's cost, counted per item in the report and in the
metrics, and not a try. Checked against the emulator's own lines in GCS."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_helpers import line_cost_nanos
from vertex_helpers import VertexDrill, check_vertex_exactly_once

from pipeline.emulator import Emulator, FaultPlan

pytestmark = pytest.mark.gcs


@pytest.fixture
def vdrill(tmp_path: Path, sqlite_url: str, gcs_server: Any, gcs_env: str) -> Iterator[VertexDrill]:
    with Emulator(
        image_scale=0.02, pending_seconds=0.1, running_seconds=0.2, storage_host=gcs_server.url
    ) as emu:
        yield VertexDrill(tmp_path, emu, sqlite_url, bucket=gcs_env, gcs_url=gcs_server.url)


def run_with(drill: VertexDrill, n: int = 4, **faults: Any) -> tuple[str, dict[str, Any]]:
    drill.emu.faults = FaultPlan.from_dict({"vertex": faults})
    drill.write_spec(n)
    run = drill.submit()
    drill.tick_until_done(run)
    report = drill.report(run)
    return run, {item["key"]: item for item in report["items"]} | {"": report}


def lines_by_key(drill: VertexDrill) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in drill.result_lines():
        found.setdefault(line["key"], []).append(line)
    return found


def image_sha(line: dict[str, Any]) -> str | None:
    parts = (line.get("response") or {}).get("candidates", [{}])[0].get("content", {})
    images = [p for p in parts.get("parts", []) if "inlineData" in p and not p.get("thought")]
    if not images:
        return None
    return hashlib.sha256(base64.b64decode(images[-1]["inlineData"]["data"])).hexdigest()


def test_a_later_image_line_is_a_billed_duplicate(vdrill: VertexDrill) -> None:
    run, items = run_with(vdrill, duplicates=[{"keys": ["img-1"], "extra": ["image"]}])
    lines = lines_by_key(vdrill)["img-1"]
    assert len(lines) == 2 and image_sha(lines[0]) != image_sha(lines[1])
    item = items["img-1"]
    assert (item["status"], item["attempts"], item["duplicates"]) == ("succeeded", 1, 1)
    assert item["sha256"] == image_sha(lines[0])  # the first line with an image
    assert round(item["cost_usd"], 9) == round(sum(map(line_cost_nanos, lines)) / 1e9, 9)
    assert vdrill.items()["img-1"].tries == 1
    check_vertex_exactly_once(vdrill, run, 4)  # the report's cost is every line's cost
    assert items[""]["summary"]["duplicates"] == 1


def test_the_first_line_with_an_image_wins_over_an_earlier_one_without(
    vdrill: VertexDrill,
) -> None:
    """A text-only line before the image line: the image line wins; the text line, billed,
    is the duplicate."""
    run, items = run_with(
        vdrill, duplicates=[{"keys": ["img-2"], "extra": ["text"], "where": "before"}]
    )
    lines = lines_by_key(vdrill)["img-2"]
    assert image_sha(lines[0]) is None and image_sha(lines[1]) is not None
    item = items["img-2"]
    assert (item["status"], item["attempts"], item["duplicates"]) == ("succeeded", 1, 1)
    assert item["sha256"] == image_sha(lines[1])
    assert round(item["cost_usd"], 9) == round(sum(map(line_cost_nanos, lines)) / 1e9, 9)
    check_vertex_exactly_once(vdrill, run, 4)


def test_when_no_line_has_an_image_the_first_decides(vdrill: VertexDrill) -> None:
    """The first line (a 400-class status, unbilled) decides: failed for good after one try;
    the later text-only line is billed as a duplicate."""
    _, items = run_with(
        vdrill,
        line_errors=[{"keys": ["img-0"], "status": "INVALID_ARGUMENT: bad request"}],
        duplicates=[{"keys": ["img-0"], "extra": ["text"]}],
    )
    item = items["img-0"]
    assert (item["status"], item["attempts"], item["duplicates"]) == ("failed", 1, 1)
    assert "INVALID_ARGUMENT" in item["error"]
    lines = lines_by_key(vdrill)["img-0"]
    assert item["cost_usd"] > 0
    assert round(item["cost_usd"], 9) == round(line_cost_nanos(lines[1]) / 1e9, 9)
    row = vdrill.items()["img-0"]
    assert (row.final, row.tries) == (True, 1)


def test_an_unbilled_extra_line_is_no_duplicate(vdrill: VertexDrill) -> None:
    """An extra line with a status error and no usage costs nothing and is not counted."""
    run, items = run_with(vdrill, duplicates=[{"keys": ["img-3"], "extra": ["error"]}])
    assert len(lines_by_key(vdrill)["img-3"]) == 2
    assert (items["img-3"]["status"], items["img-3"]["duplicates"]) == ("succeeded", 0)
    check_vertex_exactly_once(vdrill, run, 4)


def test_duplicates_across_files_in_name_order(vdrill: VertexDrill) -> None:
    """Output in two files, the extra lines at the end of the last one: the first file's
    line wins, the later ones are duplicates; every line's cost is in the account."""
    run, items = run_with(
        vdrill,
        files=2,
        duplicates=[
            {"keys": ["img-0", "img-3"], "extra": ["image", "text", "error"], "where": "end"}
        ],
    )
    for key in ("img-0", "img-3"):
        lines = lines_by_key(vdrill)[key]
        assert len(lines) == 4
        assert items[key]["duplicates"] == 2 and items[key]["attempts"] == 1
        assert items[key]["sha256"] == image_sha(lines[0])
    assert items[""]["summary"]["duplicates"] == 4
    check_vertex_exactly_once(vdrill, run, 4)
    metrics = vdrill.cli("metrics")
    assert metrics.code == 0, metrics.err
    assert "nanobatch_duplicate_lines_total 4" in metrics.out
    status = json.loads(vdrill.cli("status", run, "--json").out)["runs"][0]
    assert status["metrics"]["duplicates"]["lines"] == 4
    assert status["metrics"]["attempts"] == 4  # duplicates are not tries


def test_report_formats_carry_duplicates(vdrill: VertexDrill) -> None:
    run, _ = run_with(vdrill, duplicates=[{"keys": ["img-1"], "extra": ["image"]}])
    out = vdrill.cli("report", run, "--format", "csv")
    assert out.code == 0, out.err
    header, *rows = out.out.strip().splitlines()
    assert header.split(",")[-1] == "duplicates"
    assert sorted(r.split(",")[-1] for r in rows) == ["0", "0", "0", "1"]
