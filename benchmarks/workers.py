"""Concurrent harvest: B finished batches of M small images on a PostgreSQL ledger (a fresh
database nb_bench_<hex>, dropped afterwards), harvested by 1 and then by 2 concurrent
`python -m pipeline tick` processes (the per-batch claim makes them take different batches).
Wall time from launching the processes until every one has exited with all batches
harvested; the speed-up of 2 over 1 on this machine; each process's peak RSS.

The batches are submitted and polled to `done` in this process first, so the timed ticks
only harvest (plus their fixed start-up: interpreter, imports, schema check).

    python -m benchmarks workers [--quick] [--workers-batches 8] [--workers-images 50]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common


def _prepare(url: str, emu_url: str, work: Path, batches: int, images: int) -> str:
    """Submit a run of batches x images and poll it until every batch is `done`."""
    from pipeline.adapters.ledger import repo
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec
    from pipeline.shell.poll import poll_batches
    from pipeline.shell.submit import Submitter, form_batches

    ctx = common.make_context(url, work / "state", emu_url)
    common.write_prompts_csv(work / "prompts.csv", batches * images, prefix=work.name)
    spec = common.write_spec(
        work,
        name=f"bench-workers-{work.name}",
        input_file="prompts.csv",
        output_uri=str(work / "out"),
        size="1K",
        max_requests_per_batch=images,
    )
    catalog = load_catalog()
    run_id, _ = create_run(ctx, load_spec(spec, catalog), catalog, force=True)
    with ctx.ledger.engine.connect() as conn:
        run = repo.get_run(conn, run_id)
    form_batches(ctx, run, catalog)
    Submitter(ctx).run({run.id: run})
    deadline = time.monotonic() + 120
    while True:
        poll_batches(ctx, {run.id: run})
        with ctx.ledger.engine.connect() as conn:
            states = repo.batch_state_counts(conn, run_id)
        if states.get("done", 0) == batches or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if states.get("done", 0) != batches:
        raise RuntimeError(f"batches not done: {states}")
    ctx.ledger.engine.dispose()
    return run_id


def _ticks(url: str, emu_url: str, work: Path, procs: int) -> dict[str, Any]:
    """`procs` concurrent `python -m pipeline tick`; wall time and what each harvested."""
    env = os.environ | {
        "NANOBATCH_DATABASE_URL": url,
        "GEMINI_API_KEY": common.EMULATOR_KEY,
        "GOOGLE_GEMINI_BASE_URL": emu_url,
        "NANOBATCH_STATE_DIR": str(work / "state"),
        "NANOBATCH_LOG_FORMAT": "json",
    }
    t0 = time.perf_counter()
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "tick"],
            cwd=common.REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    samplers = [common.RssSampler(p.pid) for p in running]
    for s in samplers:
        s.start()
    harvested = []
    for proc, sampler in zip(running, samplers, strict=True):
        _, err = proc.communicate(timeout=600)
        sampler.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"tick failed ({proc.returncode}):\n{err[-3000:]}")
        found = re.search(r"harvested (\d+)", err)
        harvested.append(int(found.group(1)) if found else -1)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "harvested_per_process": harvested,
        "peak_rss_mib_per_process": [round(s.peak_kib / 1024, 1) for s in samplers],
    }


def _one(
    procs: int, emu_url: str, root: Path, batches: int, images: int, quick: bool
) -> dict[str, Any]:
    from pipeline.adapters.ledger import db, repo

    work = root / f"p{procs}"
    work.mkdir()
    with common.postgres_database() as url:
        run_id = _prepare(url, emu_url, work, batches, images)
        got = _ticks(url, emu_url, work, procs)
        engine = db.make_engine(url)
        with engine.connect() as conn:
            states = repo.batch_state_counts(conn, run_id)
            items = repo.item_counts(conn, run_id)
        # The same processes with nothing left to do: the fixed start-up in every figure.
        idle_s = None if quick else _ticks(url, emu_url, work, procs)["seconds"]
        engine.dispose()
    if states.get("harvested", 0) != batches:
        raise RuntimeError(f"not all harvested with {procs} processes: {states}")
    return {
        "processes": procs,
        "batches": batches,
        "images": batches * images,
        "seconds": got["seconds"],
        "images_per_s": round(batches * images / got["seconds"], 1),
        "idle_tick_s": idle_s,
        "harvested_per_process": got["harvested_per_process"],
        "peak_rss_mib_per_process": got["peak_rss_mib_per_process"],
        "succeeded": items.get("succeeded", 0),
    }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers-batches", type=int, default=8, help="workers: finished batches")
    p.add_argument("--workers-images", type=int, default=50, help="workers: images per batch")
    p.add_argument("--workers-scale", type=float, default=0.25, help="workers: image scale")


def run(a: argparse.Namespace) -> dict[str, Any]:
    common.quiet_logs()
    batches = 2 if a.quick else a.workers_batches
    images = 5 if a.quick else a.workers_images
    scale = 0.05 if a.quick else a.workers_scale
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        with common.emulator(
            root / "emu",
            image_scale=scale,
            pending_seconds=0.5,
            running_seconds=0.5,
            nodelay=True,
        ) as (_, emu_url):
            rows = [_one(procs, emu_url, root, batches, images, a.quick) for procs in (1, 2)]
    one, two = rows
    speedup = common.ratio(one["seconds"], two["seconds"])
    net = None
    if one["idle_tick_s"] is not None:
        net = common.ratio(
            one["seconds"] - one["idle_tick_s"], max(two["seconds"] - two["idle_tick_s"], 0.01)
        )
    common.table(
        f"harvest of {batches} finished batches x {images} images (scale {scale}) on "
        f"PostgreSQL by 1 vs 2 tick processes: speed-up {speedup} (without start-up {net})",
        [{k: v for k, v in r.items() if not k.endswith("per_process")} for r in rows],
    )
    out = {
        "quick": bool(a.quick),
        "cpus": os.cpu_count(),
        "image_scale": scale,
        "runs": rows,
        "speedup": speedup,
        "speedup_without_startup": net,
    }
    print(f"wrote {common.save('workers', out)}")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    add_args(parser)
    run(parser.parse_args())
