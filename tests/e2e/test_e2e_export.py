"""`nanobatch export RUN --format imagefolder|webdataset --out PATH` (CONTRACT section 12),
checked with the real consumers: Hugging Face `datasets` loads the imagefolder as it is, and
the `webdataset` library iterates the shards. A real run on the emulator makes the images;
one item fails for good, so "only succeeded images" is checked too."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import tarfile
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pipeline.emulator import FaultPlan, LineFault

FAILED_KEY = "vase-301"
SUCCEEDED = ["mug-001", "lamp-101", "chair-201"]  # the run's row order
METADATA_COLUMNS = {
    "file_name",
    "key",
    "prompt",
    "aspect_ratio",
    "image_size",
    "model",
    "seed",
    "references",
    "input_tokens",
    "output_image_tokens",
    "output_text_tokens",
    "thinking_tokens",
    "cost_usd",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _finished_run(make_e2e: Any, **emu_options: Any) -> tuple[Any, dict[str, Any]]:
    """A run of the default rows where FAILED_KEY fails for good: (world, report json)."""
    plan = FaultPlan(line_faults=[LineFault(kind="error", code=3, keys=[FAILED_KEY])])
    e2e = make_e2e(faults=plan, **emu_options)
    result = e2e.run("--json")
    assert result.code == 3, result.stderr
    report = result.json()
    statuses = {i["key"]: i["status"] for i in report["items"]}
    assert statuses == {**dict.fromkeys(SUCCEEDED, "succeeded"), FAILED_KEY: "failed"}
    return e2e, report


def _items(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["key"]: i for i in report["items"]}


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> its sha256."""
    return {
        str(p.relative_to(folder)): _sha(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _load_imagefolder(folder: Path, cache: Path) -> Any:
    import datasets  # a dev dependency: the real consumer, never imported by nanobatch

    return datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=str(cache)
    )


def _wds_samples(shards: list[Path]) -> list[dict[str, Any]]:
    import webdataset  # a dev dependency: the real consumer, never imported by nanobatch

    with warnings.catch_warnings():
        # webdataset leaves each shard's file to the garbage collector: collect it here, with
        # its ResourceWarning silenced, rather than fail whichever later test the GC lands in.
        warnings.simplefilter("ignore", ResourceWarning)
        dataset = webdataset.WebDataset([str(p) for p in shards], shardshuffle=False)
        samples = list(dataset)
        del dataset
        gc.collect()
    return samples


# ── imagefolder ──────────────────────────────────────────────────────────────


def test_export_imagefolder_loads_with_datasets(make_e2e: Any, tmp_path: Path) -> None:
    """`load_dataset("imagefolder", data_dir=OUT)` sees every succeeded image, in row order,
    with its key, prompt, ratio, size, model, seed, references, tokens and cost."""
    e2e, report = _finished_run(make_e2e)
    out = tmp_path / "dataset"
    result = e2e.invoke("export", report["run"], "--format", "imagefolder", "--out", str(out))
    assert result.code == 0, result.stderr
    assert "exported 3 images" in result.stderr
    items = _items(report)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["metadata.jsonl", *(Path(items[k]["uri"]).name for k in SUCCEEDED)])

    ds = _load_imagefolder(out, tmp_path / "hf-cache")
    assert ds.num_rows == 3
    assert set(ds.column_names) >= (METADATA_COLUMNS - {"file_name"}) | {"image"}
    assert ds["key"] == SUCCEEDED
    for row in ds:
        item = items[row["key"]]
        assert row["model"] == item["model"] == "gemini-3-pro-image-preview"
        assert row["prompt"].startswith("Studio photo of ")
        assert row["image_size"] == "1K"
        assert row["seed"] is None
        assert row["references"] == []
        for name in ("input_tokens", "output_image_tokens", "output_text_tokens"):
            assert row[name] == item[name], (row["key"], name)
        assert row["thinking_tokens"] == item["thinking_tokens"]
        assert row["cost_usd"] == pytest.approx(item["cost_usd"], abs=1e-12)
        source = Path(item["uri"]).read_bytes()
        with Image.open(io.BytesIO(source)) as img:
            assert row["image"].size == img.size
    ratios = dict(zip(ds["key"], ds["aspect_ratio"], strict=True))
    assert ratios == {"mug-001": "1:1", "lamp-101": "16:9", "chair-201": "1:1"}

    lines = (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert set(first) >= METADATA_COLUMNS
    assert first["file_name"] == Path(items["mug-001"]["uri"]).name


def test_export_imagefolder_rerun_after_a_kill_gives_the_same_files(
    make_e2e: Any, tmp_path: Path
) -> None:
    """Killed after the second image, metadata.jsonl is not there yet; run again, the folder
    is file for file what an uninterrupted export writes."""
    e2e, report = _finished_run(make_e2e)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    args = ["export", report["run"], "--format", "imagefolder", "--out"]
    assert e2e.invoke(*args, str(clean)).code == 0
    e2e.monkeypatch.setenv("NANOBATCH_CRASH_AT", "export.sample:2")
    died = e2e.subprocess(*args, str(resumed))
    e2e.monkeypatch.delenv("NANOBATCH_CRASH_AT")
    assert died.code == -9, died.stderr
    assert not (resumed / "metadata.jsonl").exists()
    again = e2e.subprocess(*args, str(resumed))
    assert again.code == 0, again.stderr
    assert _tree(resumed) == _tree(clean)


# ── webdataset ───────────────────────────────────────────────────────────────


def test_export_webdataset_reads_with_webdataset(make_e2e: Any, tmp_path: Path) -> None:
    """Shards `<job>-000000.tar`... of `<name>.png` + `<name>.json`, at most N samples each,
    iterate in `webdataset.WebDataset` with every image's bytes and its JSON."""
    e2e, report = _finished_run(make_e2e)
    out = tmp_path / "wds"
    result = e2e.invoke(
        "export",
        report["run"],
        "--format",
        "webdataset",
        "--out",
        str(out),
        "--shard-max-samples",
        "2",
    )
    assert result.code == 0, result.stderr
    shards = sorted(out.iterdir())
    assert [p.name for p in shards] == ["e2e-job-000000.tar", "e2e-job-000001.tar"]
    with tarfile.open(shards[0]) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            "mug-001.png",
            "mug-001.json",
            "lamp-101.png",
            "lamp-101.json",
        ]
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o644)
        }

    samples = _wds_samples(shards)
    items = _items(report)
    assert [s["__key__"] for s in samples] == SUCCEEDED
    for sample in samples:
        meta = json.loads(sample["json"])
        item = items[meta["key"]]
        assert set(meta) >= METADATA_COLUMNS
        assert _sha(sample["png"]) == item["sha256"]
        assert meta["file_name"] == f"{sample['__key__']}.png"
        assert meta["cost_usd"] == pytest.approx(item["cost_usd"], abs=1e-12)
        assert meta["output_image_tokens"] == item["output_image_tokens"]


def test_export_webdataset_shards_stay_under_the_byte_limit(make_e2e: Any, tmp_path: Path) -> None:
    """--shard-max-bytes: no shard is larger than the limit unless one sample alone is."""
    e2e, report = _finished_run(make_e2e, image_scale=0.25)  # 256 px, ~100 KB images
    sizes = [Path(i["uri"]).stat().st_size for i in report["items"] if i["uri"]]
    assert min(sizes) > 50_000
    limit = 2 * max(sizes) + 16_384  # two samples and their headers fit, three do not
    out = tmp_path / "wds"
    result = e2e.invoke(
        "export", report["run"], "--format", "webdataset", "--out", str(out),
        "--shard-max-bytes", str(limit),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    shards = sorted(out.iterdir())
    assert [p.name for p in shards] == ["e2e-job-000000.tar", "e2e-job-000001.tar"]
    assert all(p.stat().st_size <= limit for p in shards)
    assert [s["__key__"] for s in _wds_samples(shards)] == SUCCEEDED


def test_export_webdataset_rerun_after_a_kill_is_byte_identical(
    make_e2e: Any, tmp_path: Path
) -> None:
    """Killed while the second shard is being written: no partial shard under a final name;
    run again, every shard is byte for byte what an uninterrupted export writes."""
    e2e, report = _finished_run(make_e2e)
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    args = ["export", report["run"], "--format", "webdataset", "--shard-max-samples", "2"]
    assert e2e.invoke(*args, "--out", str(clean)).code == 0
    e2e.monkeypatch.setenv("NANOBATCH_CRASH_AT", "export.sample:3")
    died = e2e.subprocess(*args, "--out", str(resumed))
    e2e.monkeypatch.delenv("NANOBATCH_CRASH_AT")
    assert died.code == -9, died.stderr
    assert sorted(p.name for p in resumed.iterdir() if not p.name.startswith(".")) == [
        "e2e-job-000000.tar"
    ]
    assert _tree(resumed)["e2e-job-000000.tar"] == _tree(clean)["e2e-job-000000.tar"]
    staging = e2e.state_dir / "export"
    assert [p.name for p in staging.iterdir()]  # the killed export's staging folder
    again = e2e.subprocess(*args, "--out", str(resumed))
    assert again.code == 0, again.stderr
    assert _tree(resumed) == _tree(clean)
    assert list(staging.iterdir()) == []  # swept: its process is dead
    third = e2e.invoke(*args, "--out", str(clean))  # a rerun over a finished export
    assert third.code == 0, third.stderr
    assert _tree(resumed) == _tree(clean)


def test_export_memory_stays_flat(make_e2e: Any, tmp_path: Path) -> None:
    """Images go through one at a time: the export's peak Python memory is a small fraction
    of the bytes it copies."""
    e2e = make_e2e(image_scale=0.5)  # 512 px images, ~400 KB each
    rows = [{"sku": f"item-{i:03d}", "title": f"thing {i}", "colour": "red"} for i in range(60)]
    e2e.write_csv(rows)
    e2e.write_spec(max_requests_per_batch=30)
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()
    total = sum(Path(i["uri"]).stat().st_size for i in report["items"])
    assert total > 20_000_000
    for fmt in ("webdataset", "imagefolder"):
        tracemalloc.start()
        try:
            code = e2e.invoke("export", report["run"], "--format", fmt, "--out", fmt).code
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code == 0
        assert peak < total / 4, (fmt, peak, total)


def test_export_skips_an_image_gone_from_the_output(make_e2e: Any, tmp_path: Path) -> None:
    """An image deleted from the run's output is left out and named; the rest export."""
    e2e, report = _finished_run(make_e2e)
    Path(_items(report)["lamp-101"]["uri"]).unlink()
    out = tmp_path / "dataset"
    result = e2e.invoke("export", report["run"], "--format", "imagefolder", "--out", str(out))
    assert result.code == 0, result.stderr
    assert "exported 2 images" in result.stderr
    assert "skipped 1 whose image is gone or changed (lamp-101)" in result.stderr
    assert _load_imagefolder(out, tmp_path / "hf-cache")["key"] == ["mug-001", "chair-201"]


# ── gs:// ───────────────────────────────────────────────────────────────────


@pytest.mark.gcs
def test_export_to_gcs_both_formats(make_e2e: Any, gcs_env: str, tmp_path: Path) -> None:
    """Both formats export to gs:// on fake-gcs-server; shards are create-only objects that a
    rerun adopts (same generation); what is downloaded loads in the real consumers."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    e2e, report = _finished_run(make_e2e)
    bucket = storage.Client(project="nanobatch-test", credentials=AnonymousCredentials()).bucket(
        gcs_env
    )
    wds_uri = f"gs://{gcs_env}/datasets/wds"
    args = ["export", report["run"], "--format", "webdataset", "--shard-max-samples", "2"]
    result = e2e.invoke(*args, "--out", wds_uri)
    assert result.code == 0, result.stderr
    blobs = sorted(bucket.list_blobs(prefix="datasets/wds/"), key=lambda b: b.name)
    assert [b.name for b in blobs] == [
        "datasets/wds/e2e-job-000000.tar",
        "datasets/wds/e2e-job-000001.tar",
    ]
    assert {b.content_type for b in blobs} == {"application/x-tar"}
    generations = {b.name: b.generation for b in blobs}
    local = tmp_path / "from-gcs"
    local.mkdir()
    for blob in blobs:
        blob.download_to_filename(str(local / blob.name.rsplit("/", 1)[1]))
    assert [s["__key__"] for s in _wds_samples(sorted(local.iterdir()))] == SUCCEEDED
    again = e2e.invoke(*args, "--out", wds_uri)
    assert again.code == 0, again.stderr
    after = {b.name: b.generation for b in bucket.list_blobs(prefix="datasets/wds/")}
    assert after == generations

    folder_uri = f"gs://{gcs_env}/datasets/folder"
    result = e2e.invoke("export", report["run"], "--format", "imagefolder", "--out", folder_uri)
    assert result.code == 0, result.stderr
    folder = tmp_path / "folder-from-gcs"
    folder.mkdir()
    for blob in bucket.list_blobs(prefix="datasets/folder/"):
        blob.download_to_filename(str(folder / blob.name.rsplit("/", 1)[1]))
    assert sorted(p.suffix for p in folder.iterdir()) == [".jsonl", ".png", ".png", ".png"]
    assert _load_imagefolder(folder, tmp_path / "hf-cache")["key"] == SUCCEEDED

    missing = e2e.invoke(
        "export", report["run"], "--format", "webdataset", "--out", "gs://no-such-bucket-nb/x"
    )
    assert missing.code == 1
    assert "no-such-bucket-nb" in _one_error_line(missing.stderr)


# ── bad input ────────────────────────────────────────────────────────────────


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_export_bad_input_exits_2_with_one_line(make_e2e: Any, tmp_path: Path) -> None:
    """Unknown run, unknown format, --out naming a file: exit 2 and one line naming it."""
    e2e, report = _finished_run(make_e2e)
    unknown = e2e.invoke("export", "no-such-run", "--format", "imagefolder", "--out", "x")
    assert unknown.code == 2
    assert "no-such-run" in _one_error_line(unknown.stderr)

    bad = e2e.invoke("export", report["run"], "--format", "zip", "--out", "x")
    assert bad.code == 2
    line = _one_error_line(bad.stderr)
    assert "imagefolder" in line and "webdataset" in line

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for fmt in ("imagefolder", "webdataset"):
        clash = e2e.invoke("export", report["run"], "--format", fmt, "--out", str(a_file))
        assert clash.code == 2, clash.stderr
        assert str(a_file) in _one_error_line(clash.stderr)
    assert a_file.read_text() == "not a folder"


def test_export_unwritable_out_exits_1(make_e2e: Any, tmp_path: Path) -> None:
    """An --out that cannot be made (a file in its path) is a storage error: exit 1."""
    e2e, report = _finished_run(make_e2e)
    (tmp_path / "blocker").write_text("x")
    out = tmp_path / "blocker" / "dataset"
    result = e2e.invoke("export", report["run"], "--format", "webdataset", "--out", str(out))
    assert result.code == 1, result.stderr
    assert str(out) in _one_error_line(result.stderr)


def test_export_refuses_different_bytes_under_a_final_name(make_e2e: Any, tmp_path: Path) -> None:
    """A shard name already taken by other bytes is never overwritten: exit 1, named."""
    e2e, report = _finished_run(make_e2e)
    out = tmp_path / "wds"
    out.mkdir()
    (out / "e2e-job-000000.tar").write_bytes(b"someone else's")
    result = e2e.invoke("export", report["run"], "--format", "webdataset", "--out", str(out))
    assert result.code == 1, result.stderr
    assert "e2e-job-000000.tar" in _one_error_line(result.stderr)
    assert (out / "e2e-job-000000.tar").read_bytes() == b"someone else's"
