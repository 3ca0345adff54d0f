"""Report benchmark: `report` of an N-item finished run (items and attempts written straight
into the ledger by executemany, see common.fill_finished_run) as
jsonl and as parquet, each in a fresh process with its peak RSS sampled: memory must stay
flat in the number of items.

    python -m benchmarks report [--quick] [--report-items 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.shell.reporting import render_report

    work = Path(args["work"])
    ctx = common.make_context(f"sqlite:///{work / 'ledger.db'}", work / "state")
    if args["step"] == "setup":
        # Finished items + one recorded attempt each, by raw executemany (no emulator).
        seconds = common.fill_finished_run(ctx.engine, "bench-report", int(args["items"]))
        return {"run_id": "bench-report", "setup_s": seconds}
    fmt = args["step"]
    out_path = work / f"report.{fmt}"
    idle = common.rss_kib()
    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        if fmt == "parquet":
            render_report(ctx, args["run_id"], fmt, None, out_path)
        else:
            with out_path.open("w") as fh:
                render_report(ctx, args["run_id"], fmt, fh, None)
        seconds = time.perf_counter() - t0
    return {
        "format": fmt,
        "items": args["items"],
        "seconds": round(seconds, 2),
        "items_per_s": round(int(args["items"]) / seconds),
        "bytes": out_path.stat().st_size,
        "rss_before_mib": round(idle / 1024, 1),
        "peak_rss_mib": round(sampler.peak_kib / 1024, 1),
    }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-items", type=int, default=1_000_000, help="report: run items")


def run(a: argparse.Namespace) -> dict[str, Any]:
    items = 2000 if a.quick else a.report_items
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        base = {"work": tmp, "items": items}
        setup = common.child("benchmarks.report_run", base | {"step": "setup"})
        rows = [
            common.child("benchmarks.report_run", base | {"step": fmt, "run_id": setup["run_id"]})
            for fmt in ("jsonl", "parquet")
        ]
    common.table(f"report of a {items}-item run (setup {setup['setup_s']} s)", rows)
    out = {"quick": bool(a.quick), "items": items, "setup_s": setup["setup_s"], "formats": rows}
    print(f"wrote {common.save('report', out)}")
    return out


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
