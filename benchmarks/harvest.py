"""Harvest benchmark, timed the way a user meets it: a results file of N 2K images (about
`--image-mb` MB of base64 each) is made by the emulator (a separate process) for a run
submitted through the pipeline; then the real `harvest_batch` runs in a fresh process, timed
from the start of the download (served by the emulator over loopback) to the last image
recorded AND that process exiting; its peak RSS is the kernel's maxrss for that process
(os.wait4). A second figure harvests the same batch from an already-downloaded spool file.

The floor, measured in the same run on the same (downloaded, page-cached) file in its own
fresh process: a bare loop that reads it line by line, json.loads, base64-decodes and writes
each image to its own file. Every measurement is repeated `--repeat` times on the same file
(the ledger is restored from a copy taken before the first harvest).

    python -m benchmarks harvest [--quick] [--image-mb 1.5] [--sizes-gb 1 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
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


# ── children: set up a run, harvest it, the floor ────────────────────────────


def _child(args: dict[str, Any]) -> dict[str, Any]:
    return {"setup": _setup, "harvest": _harvest, "floor": _floor}[args["mode"]](args)


def _setup(args: dict[str, Any]) -> dict[str, Any]:
    """Create and submit a run, poll until its one batch is done, and download the results
    file once (a plain GET) for the floor and the already-downloaded figure."""
    from pipeline.adapters.ledger import repo
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec
    from pipeline.shell.poll import poll_batches
    from pipeline.shell.submit import Submitter, form_batches

    work = Path(args["work"])
    n = int(args["images"])
    common.write_prompts_csv(work / "prompts.csv", n, prefix=args["tag"])
    spec_path = common.write_spec(
        work,
        name="bench-harvest",
        input_file="prompts.csv",
        output_uri=str(work / "out"),
        model=MODEL,
    )
    ctx = _context(args)
    catalog = load_catalog()
    run_id, _ = create_run(ctx, load_spec(spec_path, catalog), catalog, force=True)
    with ctx.ledger.engine.connect() as conn:
        run = repo.get_run(conn, run_id)
    runs = {run.id: run}
    form_batches(ctx, run, catalog)
    Submitter(ctx).run(runs)
    t0 = time.perf_counter()
    while True:
        poll_batches(ctx, runs)
        with ctx.ledger.engine.connect() as conn:
            done = repo.batches_in(conn, ["done"], run.id)
        if done:
            break
        time.sleep(0.2)
    generate_s = time.perf_counter() - t0
    assert len(done) == 1, "expected one batch"
    batch = done[0]
    assert batch.output_file
    t0 = time.perf_counter()
    size = ctx.backend.download(batch.output_file, work / "results.jsonl")
    download_s = time.perf_counter() - t0
    ctx.ledger.engine.dispose()
    return {
        "run_id": run.id,
        "batch_id": batch.id,
        "display_name": batch.display_name,
        "file_bytes": size,
        "generate_s": round(generate_s, 2),
        "plain_get_s": round(download_s, 3),
    }


def _harvest(args: dict[str, Any]) -> dict[str, Any]:
    """Harvest the batch (the ledger as setup left it); prints the wall-clock start just
    before `harvest_batch`; the parent takes the end when this process has exited."""
    from pipeline.adapters.ledger import repo
    from pipeline.adapters.malloc import cap_arenas
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.harvest import harvest_batch

    cap_arenas()  # as pipeline.cli.main does
    ctx = _context(args)
    catalog = load_catalog()
    with ctx.ledger.engine.connect() as conn:
        run = repo.get_run(conn, args["run_id"])
        batch = repo.get_batch(conn, int(args["batch_id"]))
    start = time.time()
    assert harvest_batch(ctx, batch, run, catalog)
    recorded = time.time()
    with ctx.ledger.engine.connect() as conn:
        counts = repo.item_counts(conn, run.id)
    assert counts.get("succeeded") == int(args["images"]), counts
    gc.freeze()  # as pipeline.cli.main does before the process exits
    return {"start": start, "recorded": recorded}


def _floor(args: dict[str, Any]) -> dict[str, Any]:
    out = Path(args["out"])
    out.mkdir()
    t0 = time.perf_counter()
    n = floor_loop(Path(args["file"]), out)
    floor_s = time.perf_counter() - t0
    assert n == int(args["images"]), n
    return {"floor_s": floor_s}


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


def _context(args: dict[str, Any]) -> Any:
    work = Path(args["work"])
    return common.make_context(
        f"sqlite:///{work / 'ledger.db'}", work / "state", args["url"], args["workers"]
    )


# ── the parent ───────────────────────────────────────────────────────────────


def _timed_child(args: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child; its JSON plus `exited` (wall clock when it was reaped) and `maxrss_mib`
    (the kernel's peak RSS of that process, from wait4)."""
    work = Path(args["work"])
    out_path = work / f"child-{uuid.uuid4().hex[:8]}.out"
    cmd = [sys.executable, "-m", "benchmarks.harvest", "--child", json.dumps(args)]
    with out_path.open("w") as out, open(work / "child.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=common.REPO, stdout=out, stderr=err, env=_env(env))
        _, status, usage = os.wait4(proc.pid, 0)
        exited = time.time()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (work / "child.err").read_text()[-4000:]
        raise RuntimeError(f"harvest child {args['mode']} failed ({proc.returncode}):\n{tail}")
    last = [ln for ln in out_path.read_text().splitlines() if ln.startswith("{")][-1]
    out_path.unlink()
    result: dict[str, Any] = json.loads(last)
    cpu_s = round(usage.ru_utime + usage.ru_stime, 2)
    return result | {
        "exited": exited,
        "maxrss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": cpu_s,
    }


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(common.REPO), os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"PYTHONPATH": path} | (extra or {})


def _one_harvest(
    work: Path, base: dict[str, Any], setup: dict[str, Any], out_uri: str, spooled: bool
) -> tuple[float, float, float, float]:
    """Restore the ledger, point the run at a fresh output, maybe pre-fill the spool, harvest
    in a fresh process: (seconds to exit, seconds to last record, peak RSS MiB, CPU s)."""
    for leftover in ("ledger.db-wal", "ledger.db-shm"):
        (work / leftover).unlink(missing_ok=True)
    shutil.copyfile(work / "ledger.pristine.db", work / "ledger.db")
    with sqlite3.connect(work / "ledger.db") as db:
        db.execute("UPDATE runs SET output_uri = ? WHERE id = ?", (out_uri, setup["run_id"]))
    db.close()
    spool = work / "state" / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    if spooled:
        spool.mkdir(parents=True, mode=0o700)
        target = spool / f"{setup['display_name']}.results.jsonl"
        try:
            os.link(work / "results.jsonl", target)
        except OSError:
            shutil.copyfile(work / "results.jsonl", target)
    env = {"STORAGE_EMULATOR_HOST": base["gcs_url"]} if base.get("gcs_url") else None
    got = _timed_child(base | setup | {"mode": "harvest"}, env)
    if not out_uri.startswith("gs://"):
        shutil.rmtree(out_uri, ignore_errors=True)
    elapsed = got["exited"] - got["start"]
    return elapsed, got["recorded"] - got["start"], got["maxrss_mib"], got["cpu_s"]


def measure(
    sizes_gb: list[float],
    image_mb: float,
    workers: int,
    gcs_url: str | None = None,
    images: list[int] | None = None,
    repeat: int = 1,
    spooled: bool = True,
    server_pid: int | None = None,
) -> list[dict[str, Any]]:
    """One setup per size against one emulator, then `repeat` rounds of floor, harvest with
    the download and (with `spooled`) harvest of the downloaded file; a gs:// output when
    `gcs_url` is given. One row per size and round."""
    counts = images or [max(4, round(gb * 1e9 / (image_mb * 1e6))) for gb in sizes_gb]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-harvest-") as tmp:
        root = Path(tmp)
        with common.emulator(root / "emu", image_scale=scale_for(image_mb), nodelay=True) as (
            _,
            url,
        ):
            for i, n in enumerate(counts):
                work = root / f"size{i}"
                work.mkdir()
                base = {"work": str(work), "images": n, "url": url, "workers": workers}
                base |= {"tag": f"h{i}", "gcs_url": gcs_url}
                setup = _timed_child(base | {"mode": "setup"})
                for key in ("exited", "maxrss_mib"):
                    setup.pop(key)
                shutil.copyfile(work / "ledger.db", work / "ledger.pristine.db")
                size = setup["file_bytes"]
                for r in range(repeat):
                    floor = _timed_child(
                        base
                        | {"mode": "floor", "file": str(work / "results.jsonl")}
                        | {"out": str(work / f"floor{r}")}
                    )
                    shutil.rmtree(work / f"floor{r}", ignore_errors=True)
                    floor_s = floor["floor_s"]
                    out = _output(work, gcs_url, f"wire{r}")
                    server_cpu = process_cpu_s(server_pid)
                    wire_s, wire_rec_s, wire_rss, wire_cpu = _one_harvest(
                        work, base, setup, out, False
                    )
                    server_cpu = process_cpu_s(server_pid) - server_cpu
                    row: dict[str, Any] = {
                        "images": n,
                        "file_mb": round(size / 1e6, 1),
                        "round": r + 1,
                        "floor_s": round(floor_s, 3),
                        "floor_mb_per_s": round(size / 1e6 / floor_s, 1),
                        "wire_s": round(wire_s, 3),
                        "wire_recorded_s": round(wire_rec_s, 3),
                        "wire_mb_per_s": round(size / 1e6 / wire_s, 1),
                        "wire_images_per_s": round(n / wire_s, 1),
                        "wire_ratio": common.ratio(floor_s, wire_s),
                        "wire_peak_rss_mib": wire_rss,
                        "wire_cpu_s": wire_cpu,
                    }
                    if server_pid is not None:
                        row["server_cpu_s"] = round(server_cpu, 2)
                    if spooled:
                        out = _output(work, gcs_url, f"spool{r}")
                        spool_s, _, spool_rss, _ = _one_harvest(work, base, setup, out, True)
                        row |= {
                            "spooled_s": round(spool_s, 3),
                            "spooled_mb_per_s": round(size / 1e6 / spool_s, 1),
                            "spooled_ratio": common.ratio(floor_s, spool_s),
                            "spooled_peak_rss_mib": spool_rss,
                        }
                    row |= {"plain_get_s": setup["plain_get_s"], "workers": workers}
                    rows.append(row)
                shutil.rmtree(work, ignore_errors=True)
    return rows


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0 without a pid."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _output(work: Path, gcs_url: str | None, name: str) -> str:
    if gcs_url:
        return f"gs://{_make_bucket(gcs_url)}/bench"
    return str(work / name)


def _make_bucket(gcs_url: str) -> str:
    import urllib.request

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
    p.add_argument("--repeat", type=int, default=2, help="harvest: rounds per size")


def run(a: argparse.Namespace) -> dict[str, Any]:
    if a.quick:
        rows = measure([], 0.05, a.workers, images=[12], repeat=1)
    else:
        rows = measure(a.sizes_gb, a.image_mb, a.workers, repeat=a.repeat)
    common.table(
        "harvest to a local folder: wire = from the download's start to the process's exit; "
        "spooled = the file already downloaded (floor: bare read/json/b64/write loop)",
        rows,
    )
    result = {
        "goal_ratio": 0.85,
        "goal_peak_rss_mib": 200,
        "quick": bool(a.quick),
        "image_mb": 0.05 if a.quick else a.image_mb,
        "sizes": rows,
        "ratio_min": min(r["wire_ratio"] for r in rows),
        "spooled_ratio_min": min(r["spooled_ratio"] for r in rows),
        "peak_rss_mib_max": max(
            max(r["wire_peak_rss_mib"], r["spooled_peak_rss_mib"]) for r in rows
        ),
    }
    print(f"wrote {common.save('harvest', result)}")
    return result


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
