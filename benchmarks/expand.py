"""Expansion benchmark: an N-row Parquet table (and the same as CSV) through `plan`, then
`create_run` + `form_batches` + the Submitter (ledger rows, shard files, uploads to the
emulator), in a fresh process with its peak RSS sampled. The floor, same process and file:
pyarrow reads it, one JSON request line per row, raw executemany of item rows into SQLite.

    python -m benchmarks expand [--quick] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.catalog import load_catalog
    from pipeline.ledger import repo
    from pipeline.planning import load_spec, make_plan
    from pipeline.submit import Submitter, create_run, form_batches

    work = Path(args["work"])
    table = args["input"]
    spec_path = common.write_spec(
        work,
        name=f"bench-expand-{Path(table).suffix[1:]}",
        input_file=table,
        output_uri=str(work / "out"),
        size="1K",
        max_requests_per_batch=int(args["per_batch"]),
    )
    ctx = common.make_context(f"sqlite:///{work / 'ledger.db'}", work / "state", args["url"])
    catalog = load_catalog()
    out: dict[str, Any] = {"input": Path(table).suffix[1:], "rows": args["rows"]}
    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        plan = make_plan(load_spec(spec_path, catalog), catalog)
        out["plan_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        run_id, _ = create_run(ctx, load_spec(spec_path, catalog), catalog, force=True)
        out["create_run_s"] = round(time.perf_counter() - t0, 2)
        with ctx.engine.connect() as conn:
            run = repo.get_run(conn, run_id)
        t0 = time.perf_counter()
        out["batches"] = form_batches(ctx, run, catalog)
        out["form_batches_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        out["created"] = Submitter(ctx).run({run.id: run})
        out["submit_s"] = round(time.perf_counter() - t0, 2)
    out["peak_rss_mib"] = round(sampler.peak_kib / 1024, 1)
    out["items"] = plan.items
    out["pipeline_s"] = round(
        out["plan_s"] + out["create_run_s"] + out["form_batches_s"] + out["submit_s"], 2
    )
    out["expand_s"] = round(out["plan_s"] + out["create_run_s"], 2)
    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        floor_loop(work / table, work / "floor.db")
        out["floor_s"] = round(time.perf_counter() - t0, 2)
    out["floor_peak_rss_mib"] = round(sampler.peak_kib / 1024, 1)
    out["ratio_expand"] = common.ratio(out["floor_s"], out["expand_s"])
    out["ratio_pipeline"] = common.ratio(out["floor_s"], out["pipeline_s"])
    return out


def floor_loop(path: Path, db_path: Path) -> None:
    """pyarrow reads the table in batches; a JSON request line per row; executemany."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE items (run_id, key, row, prompt, line)")
    if path.suffix == ".parquet":
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=["id", "prompt"])
    else:
        batches = pacsv.open_csv(path)
    row = 0
    for batch in batches:
        keys = batch.column("id").to_pylist()
        prompts = batch.column("prompt").to_pylist()
        params = []
        for key, prompt in zip(keys, prompts, strict=True):
            row += 1
            line = json.dumps(
                {"key": key, "request": {"contents": [{"parts": [{"text": prompt}]}]}}
            )
            params.append(("r", key, row, prompt, line))
        conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", params)
    conn.commit()
    conn.close()


def write_tables(folder: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    common.write_prompts_csv(folder / "prompts.csv", rows, prefix="x")
    writer = None
    step = 100_000
    for start in range(0, rows, step):
        ids = [f"x-{i:07d}" for i in range(start, min(rows, start + step))]
        prompts = [f"benchmark image number {i} of x" for i in range(start, start + len(ids))]
        table = pa.table({"id": ids, "prompt": prompts})
        writer = writer or pq.ParquetWriter(folder / "prompts.parquet", table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="expand: table rows")


def run(a: argparse.Namespace) -> dict[str, Any]:
    rows_n = 2000 if a.quick else a.rows
    per_batch = 500 if a.quick else 10_000
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-expand-") as tmp:
        root = Path(tmp)
        write_tables(root, rows_n)
        # Batches stay pending while the run is submitted: otherwise each create makes the
        # emulator render every finished batch's images, which the timing would include.
        with common.emulator(
            root / "emu", speed=1.0, pending_seconds=86400, running_seconds=60, nodelay=True
        ) as (_, url):
            for name in ("prompts.parquet", "prompts.csv"):
                work = root / name.replace(".", "-")
                work.mkdir()
                (work / name).symlink_to(root / name)
                args = {"work": str(work), "input": name, "rows": rows_n, "url": url}
                results.append(common.child("benchmarks.expand", args | {"per_batch": per_batch}))
    common.table(
        "expand: plan + create_run + form_batches + submit (floor: arrow+json+sqlite)", results
    )
    out = {
        "goal_ratio": 0.5,
        "goal_peak_rss_mib": 300,
        "quick": bool(a.quick),
        "inputs": results,
    }
    print(f"wrote {common.save('expand', out)}")
    return out


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
