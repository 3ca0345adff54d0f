"""Harvest benchmark: a results file of N 2K images (about `--image-mb` MB of base64 each) is
made by the emulator (a subprocess) for a run submitted through the pipeline; then the real
`harvest_batch` runs in a fresh process to a local folder (or a gs:// bucket on
fake-gcs-server), timed from the first byte of the download to the last image recorded, with
its peak RSS sampled. The floor, measured in the same process on the same file: a bare loop
that reads it line by line, json.loads, base64-decodes and writes each image to its own file.

    python -m benchmarks harvest [--quick] [--image-mb 1.5] [--sizes-gb 1 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

MODEL = "gemini-3.1-flash-image-preview"
# The emulator's 2K square image is 2048 px; its PNGs are about 0.63 bytes per pixel.
BASE64_BYTES_PER_PIXEL = 1.37e6 / (819 * 819)


def scale_for(image_mb: float) -> float:
    """The emulator image_scale that gives about `image_mb` MB of base64 per 2K image."""
    pixels = image_mb * 1e6 / BASE64_BYTES_PER_PIXEL
    return round(pixels**0.5 / 2048, 4)


# ── the child: set up a run, harvest it, then measure the floor ──────────────


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.adapters.ledger import repo
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.harvest import harvest_batch
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec
    from pipeline.shell.poll import poll_batches
    from pipeline.shell.submit import Submitter, form_batches

    work = Path(args["work"])
    n = int(args["images"])
    out_uri = args["output_uri"]
    common.write_prompts_csv(work / "prompts.csv", n, prefix=args["tag"])
    spec_path = common.write_spec(
        work, name="bench-harvest", input_file="prompts.csv", output_uri=out_uri, model=MODEL
    )
    ctx = common.make_context(
        f"sqlite:///{work / 'ledger.db'}", work / "state", args["url"], args["workers"]
    )
    catalog = load_catalog()
    run_id, _ = create_run(ctx, load_spec(spec_path, catalog), catalog, force=True)
    with ctx.engine.connect() as conn:
        run = repo.get_run(conn, run_id)
    runs = {run.id: run}
    form_batches(ctx, run, catalog)
    Submitter(ctx).run(runs)
    t0 = time.perf_counter()
    while True:
        poll_batches(ctx, runs)
        with ctx.engine.connect() as conn:
            done = repo.batches_in(conn, ["done"], run.id)
        if done:
            break
        time.sleep(0.2)
    generate_s = time.perf_counter() - t0
    assert len(done) == 1, "expected one batch"
    batch = done[0]
    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        assert harvest_batch(ctx, batch, run, catalog)
        harvest_s = time.perf_counter() - t0
    harvest_rss = round(sampler.peak_kib / 1024, 1)
    with ctx.engine.connect() as conn:
        counts = repo.item_counts(conn, run.id)
    assert counts.get("succeeded") == n, counts
    # The same file again, for the floor (download time is reported, not part of the floor).
    spool = work / "floor.jsonl"
    assert batch.output_file
    t0 = time.perf_counter()
    size = ctx.backend.download(batch.output_file, spool)
    download_s = time.perf_counter() - t0
    floor_dir = work / "floor"
    floor_dir.mkdir()
    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        floor_images = floor_loop(spool, floor_dir)
        floor_s = time.perf_counter() - t0
    floor_rss = round(sampler.peak_kib / 1024, 1)
    assert floor_images == n, floor_images
    return {
        "images": n,
        "file_bytes": size,
        "generate_s": round(generate_s, 2),
        "download_only_s": round(download_s, 3),
        "harvest_s": round(harvest_s, 3),
        "floor_s": round(floor_s, 3),
        "harvest_images_per_s": round(n / harvest_s, 1),
        "floor_images_per_s": round(n / floor_s, 1),
        "harvest_mb_per_s": round(size / 1e6 / harvest_s, 1),
        "floor_mb_per_s": round(size / 1e6 / floor_s, 1),
        "ratio": common.ratio(floor_s, harvest_s),
        "harvest_peak_rss_mib": harvest_rss,
        "floor_peak_rss_mib": floor_rss,
        "workers": args["workers"],
    }


def floor_loop(path: Path, out_dir: Path) -> int:
    """The bare loop: read lines, json.loads, base64-decode the last image, write a file."""
    n = 0
    with path.open("rb") as fh:
        for raw in fh:
            line = json.loads(raw)
            parts = line["response"]["candidates"][0]["content"]["parts"]
            data = [p for p in parts if "inlineData" in p][-1]["inlineData"]["data"]
            with open(out_dir / f"{line['key']}.png", "wb") as out:
                out.write(base64.b64decode(data))
            n += 1
    return n


# ── the parent ───────────────────────────────────────────────────────────────


def measure(
    sizes_gb: list[float],
    image_mb: float,
    workers: int,
    gcs_url: str | None = None,
    images: list[int] | None = None,
) -> list[dict[str, Any]]:
    """One child per size against one emulator; a gs:// output when `gcs_url` is given."""
    counts = images or [max(4, round(gb * 1e9 / (image_mb * 1e6))) for gb in sizes_gb]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-harvest-") as tmp:
        root = Path(tmp)
        with common.emulator(root / "emu", image_scale=scale_for(image_mb)) as (_, url):
            for i, n in enumerate(counts):
                work = root / f"size{i}"
                work.mkdir()
                if gcs_url:
                    bucket = _make_bucket(gcs_url)
                    out_uri = f"gs://{bucket}/bench"
                else:
                    out_uri = str(work / "out")
                args = {
                    "work": str(work),
                    "images": n,
                    "url": url,
                    "workers": workers,
                    "output_uri": out_uri,
                    "tag": f"h{i}",
                }
                env = {"STORAGE_EMULATOR_HOST": gcs_url} if gcs_url else None
                rows.append(common.child("benchmarks.harvest", args, env=env))
                shutil.rmtree(work, ignore_errors=True)
    return rows


def _make_bucket(gcs_url: str) -> str:
    import urllib.request
    import uuid

    name = f"nb-bench-{uuid.uuid4().hex[:12]}"
    request = urllib.request.Request(
        f"{gcs_url}/storage/v1/b?project=nanobatch-bench",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    return name


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-mb", type=float, default=1.5, help="base64 MB per image")
    p.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--workers", type=int, default=4, help="NANOBATCH_HARVEST_WORKERS")


def run(a: argparse.Namespace) -> dict[str, Any]:
    if a.quick:
        rows = measure([], 0.05, a.workers, images=[12])
    else:
        rows = measure(a.sizes_gb, a.image_mb, a.workers)
    common.table("harvest to a local folder (floor: bare read/json/b64/write loop)", rows)
    result = {
        "goal_ratio": 0.7,
        "goal_peak_rss_mib": 200,
        "quick": bool(a.quick),
        "image_mb": 0.05 if a.quick else a.image_mb,
        "sizes": rows,
        "ratio_min": min(r["ratio"] for r in rows),
        "peak_rss_mib_max": max(r["harvest_peak_rss_mib"] for r in rows),
    }
    print(f"wrote {common.save('harvest', result)}")
    return result


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
