"""The product-shot example job (jobs/product-shots.toml, reference images under jobs/refs)
planned and run end to end on the emulator, as the README shows it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from e2e_checks import check_report_shape

ROOT = Path(__file__).resolve().parents[2]


def _copy_job(tmp: Path) -> Path:
    """The example's files in a scratch copy of jobs/ (its output goes beside it)."""
    jobs = tmp / "jobs"
    (jobs / "prompts").mkdir(parents=True)
    shutil.copy(ROOT / "jobs" / "product-shots.toml", jobs)
    shutil.copy(ROOT / "jobs" / "prompts" / "product-shots.csv", jobs / "prompts")
    shutil.copytree(ROOT / "jobs" / "refs", jobs / "refs")
    return jobs / "product-shots.toml"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_product_shots_example_runs_end_to_end(e2e: Any) -> None:
    spec = _copy_job(e2e.tmp)
    refs = spec.parent / "refs"
    mug, lamp, style = (_sha(refs / n) for n in ("mug.png", "lamp.jpg", "studio-style.png"))

    plan = e2e.invoke("plan", str(spec), "--json")
    assert plan.code == 0, plan.stderr
    planned = json.loads(plan.stdout)
    assert (planned["items"], planned["rejected"], planned["variants"]) == (8, 0, 2)
    assert planned["references"] == 2 * (2 + 1 + 2 + 2)

    result = e2e.run("--json", spec=spec)
    assert result.code == 0, result.stderr
    report = result.json()
    check_report_shape(report)
    items = {item["key"]: item for item in report["items"]}
    assert sorted(items) == sorted(
        f"{sku}.v{n}" for sku in ("mug-001", "mug-002", "lamp-101", "lamp-102") for n in (1, 2)
    )
    assert items["mug-001.v1"]["references"] == [mug, style]
    assert items["mug-002.v2"]["references"] == [mug]
    assert items["lamp-102.v1"]["references"] == [lamp, style]
    assert [items[f"lamp-101.v{n}"]["seed"] for n in (1, 2)] == [1, 2]
    assert all(item["status"] == "succeeded" for item in items.values())
    assert len({item["sha256"] for item in items.values()}) == 8
    # Three images, each uploaded once, however many lines sent them.
    uploads = [e for e in e2e.emu.request_log if str(e.get("file") or "").startswith("files/nb-")]
    assert len({e["file"] for e in uploads if e.get("kind") == "upload_chunk"}) == 3
    out = Path(items["mug-001.v1"]["uri"]).parent
    assert out.parent == e2e.tmp / "out" / "product-shots"
    manifest = {row["key"]: row for row in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert manifest["lamp-101.v2"]["references"] == [lamp, style]
    assert manifest["lamp-101.v2"]["seed"] == 2
