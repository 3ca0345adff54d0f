"""Items the fallback model made (issue 13, items 3 and 15): the report, the manifest and the
objects' metadata name the model that made the image, costs are at that model's rates, and
the request lines sent to the fallback model carry only what that model accepts."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from faults_helpers import FALLBACK, MODEL, Drill, line_cost_nanos
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from pipeline.emulator import Emulator, FaultPlan

FLAKY = "img-0"
"""Refused for good (INVALID_ARGUMENT) by the primary model, made by the fallback."""


@pytest.fixture
def fb_drill(tmp_path: Path, db_url: str) -> Iterator[Drill]:
    """A Drill on SQLite and on PostgreSQL whose primary model refuses FLAKY once."""
    with Emulator(image_scale=0.02, pending_seconds=0.1, running_seconds=0.2) as emu:
        emu.faults = FaultPlan.from_dict(
            {"line_faults": [{"kind": "error", "code": 3, "keys": [FLAKY], "times": 1}]}
        )
        yield Drill(tmp_path, emu, db_url)


def _run_with_fallback(drill: Drill, output: str | None = None, n: int = 3) -> str:
    spec = drill.write_spec(n, fallback=FALLBACK)
    if output is not None:
        spec.write_text(spec.read_text().replace('uri = "out"', f'uri = "{output}"'))
    run = drill.submit()
    drill.tick_until_done(run)
    return run


def _fallback_cost_nanos(drill: Drill, key: str) -> int:
    """What the fallback model's results line for `key` costs at the fallback's batch rates."""
    lines = [
        ln
        for ln in drill.result_lines()
        if ln.get("key") == key and (ln.get("response") or {}).get("candidates")
    ]
    assert len(lines) == 1, lines
    return line_cost_nanos(lines[0], FALLBACK)


def _emulator_request_lines(emu: Emulator, model: str) -> list[dict[str, Any]]:
    """The request lines the emulator received in batches created for `model`."""
    ids = [
        b["name"].removeprefix("batches/")
        for b in emu.batches()
        if b["model"].removeprefix("models/") == model
    ]
    assert ids, emu.batches()
    lines = []
    for bid in ids:
        path = emu.data_dir / "batches" / f"{bid}.input.jsonl"
        lines += [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines() if raw]
    return lines


@pytest.mark.gcs
def test_fallback_image_names_the_fallback_model_in_report_manifest_and_metadata(
    fb_drill: Drill, gcs_env: str
) -> None:
    """Issue 13 item 3: report items, manifest rows and object metadata of an item the
    fallback made name the fallback model; its cost is at the fallback's rates."""
    run = _run_with_fallback(fb_drill, f"gs://{gcs_env}/fb")
    report = fb_drill.report(run)
    items = {i["key"]: i for i in report["items"]}
    assert {k: i["status"] for k, i in items.items()} == dict.fromkeys(items, "succeeded")
    assert {k: i["model"] for k, i in items.items()} == {
        FLAKY: FALLBACK,
        "img-1": MODEL,
        "img-2": MODEL,
    }
    assert items[FLAKY]["attempts"] == 2
    expected = _fallback_cost_nanos(fb_drill, FLAKY)
    assert round(items[FLAKY]["cost_usd"], 9) == round(expected / 1e9, 9)

    bucket = storage.Client(project="nanobatch-test", credentials=AnonymousCredentials()).bucket(
        gcs_env
    )
    table = pq.read_table(io.BytesIO(bucket.blob("fb/manifest.parquet").download_as_bytes()))
    rows = {r["key"]: r for r in table.to_pylist()}
    assert {k: r["model"] for k, r in rows.items()} == {k: i["model"] for k, i in items.items()}
    for key, item in items.items():
        blob = bucket.get_blob(item["uri"].removeprefix(f"gs://{gcs_env}/"))
        assert blob is not None and blob.metadata is not None
        assert blob.metadata["nanobatch-model"] == item["model"], key
        if key == FLAKY:
            assert Decimal(blob.metadata["nanobatch-cost-usd"]) == Decimal(expected).scaleb(-9)


def test_cached_copy_of_a_fallback_image_names_the_fallback_model(fb_drill: Drill) -> None:
    """Issue 13 item 3: a later run served from the prompt cache with an image the fallback
    model made names the fallback model too (report and manifest)."""
    first = _run_with_fallback(fb_drill)
    fb_drill.out_dir = fb_drill.tmp / "again"
    fb_drill.spec.write_text(fb_drill.spec.read_text().replace('uri = "out"', 'uri = "again"'))
    second = fb_drill.submit()
    fb_drill.tick_until_done(second)
    assert second != first
    items = {i["key"]: i for i in fb_drill.report(second)["items"]}
    assert {k: i["cached"] for k, i in items.items()} == dict.fromkeys(items, True)
    assert items[FLAKY]["model"] == FALLBACK
    assert items["img-1"]["model"] == MODEL


def test_fallback_request_lines_carry_no_image_size(fb_drill: Drill) -> None:
    """Issue 13 item 15: the primary model's imageSize (1K) is not sent to a fallback model
    that takes no size (gemini-2.5-flash-image); the primary's lines keep it."""
    _run_with_fallback(fb_drill)
    primary = _emulator_request_lines(fb_drill.emu, MODEL)
    assert {ln["request"]["generationConfig"]["imageConfig"]["imageSize"] for ln in primary} == {
        "1K"
    }
    fallback = _emulator_request_lines(fb_drill.emu, FALLBACK)
    assert [ln["key"] for ln in fallback] == [FLAKY]
    config = fallback[0]["request"]["generationConfig"]["imageConfig"]
    assert config == {"aspectRatio": "1:1"}
    assert fb_drill.items()[FLAKY].state == "succeeded"
    rows = pq.read_table(fb_drill.out_dir / "manifest.parquet").to_pylist()
    assert {r["key"]: r["image_size"] for r in rows} == {FLAKY: "", "img-1": "1K", "img-2": "1K"}
