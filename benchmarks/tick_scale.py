"""Tick at scale: N live batches (1 item each, tiny images) on an in-process emulator whose
live-batch cap is raised to N (and nanobatch's, through Settings.max_live_batches), in a
fresh process on a SQLite ledger. Per tick: seconds, API calls by kind (from the emulator's
request log), SQL statements, peak RSS.

Ticks: `submit` (form, upload and create N batches), `idle` (nothing changed), `idle+history`
(the same after H finished items of an older run were written straight into the ledger: an
idle tick must not grow with them), `finish` (every batch finished at once: poll with list
pages, harvest N results), `close`.

Issue 19's figure: an idle tick with 1,000 live batches under 1 s (the limit), and O(live
work): the idle tick after the history was written takes about as long as before it.

    python -m benchmarks tick [--quick] [--tick-batches 1000] [--tick-history 200000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import common

IDLE_LIMIT_S = 1.0
"""Seconds an idle tick with 1,000 live batches may take (issue 19)."""
RUNNING_S = 3600.0
PENDING_S = 5.0


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.adapters.ledger import repo
    from pipeline.core.catalog import load_catalog
    from pipeline.emulator import Emulator
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec
    from pipeline.shell.tick import tick

    work = Path(args["work"])
    n = int(args["batches"])
    common.emulator_nodelay()
    emu = Emulator(
        api_key=common.EMULATOR_KEY,
        image_scale=0.01,
        enqueued_token_quota=10**12,
        max_live_batches=n,
        pending_seconds=PENDING_S,
        running_seconds=RUNNING_S,
        data_dir=work / "emu",
    ).start()
    try:
        ctx = common.make_context(
            f"sqlite:///{work / 'ledger.db'}", work / "state", emu.url, max_live_batches=n
        )
        queries = common.QueryCounter(ctx.ledger.engine)
        common.write_prompts_csv(work / "prompts.csv", n, prefix="t")
        spec = common.write_spec(
            work,
            name="bench-tick",
            input_file="prompts.csv",
            output_uri=str(work / "out"),
            size="1K",
            max_requests_per_batch=1,
        )
        catalog = load_catalog()
        run_id, _ = create_run(ctx, load_spec(spec, catalog), catalog, force=True)
        rows: list[dict[str, Any]] = []
        seen = len(emu.request_log)

        def one(label: str) -> dict[str, Any]:
            nonlocal seen
            queries.take()
            with common.peak_rss() as sampler:
                t0 = time.perf_counter()
                result = tick(ctx, catalog)
                seconds = time.perf_counter() - t0
            log = emu.request_log[seen:]
            seen = len(emu.request_log)
            kinds = Counter(e["kind"] for e in log if "method" in e)
            with ctx.ledger.engine.connect() as conn:
                live = repo.live_batch_count(conn)
            row = {
                "tick": label,
                "seconds": round(seconds, 3),
                "api_calls": sum(kinds.values()),
                "list": kinds.get("list", 0),
                "get": kinds.get("get", 0),
                "create": kinds.get("create", 0),
                "sql": queries.take(),
                "created": result.created,
                "polled": result.polled,
                "harvested": result.harvested,
                "live_after": live,
                "peak_rss_mib": round(sampler.peak_kib / 1024, 1),
                "api_by_kind": dict(kinds),
            }
            rows.append(row)
            return row

        one("submit")
        one("idle")
        history_s = common.fill_finished_run(
            ctx.ledger.engine, "bench-history", int(args["history"])
        )
        one("idle+history")
        emu.clock.advance(PENDING_S + RUNNING_S + 1)
        one("finish")
        one("close")
        with ctx.ledger.engine.connect() as conn:
            state = repo.get_run(conn, run_id).state
            counts = repo.item_counts(conn, run_id)
        return {"rows": rows, "history_s": history_s, "run_state": state, "items": counts}
    finally:
        emu.stop()


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tick-batches", type=int, default=1000, help="tick: live batches")
    p.add_argument(
        "--tick-history", type=int, default=200_000, help="tick: finished items of older runs"
    )


def run(a: argparse.Namespace) -> dict[str, Any]:
    batches = 20 if a.quick else a.tick_batches
    history = 2000 if a.quick else a.tick_history
    with tempfile.TemporaryDirectory(prefix="bench-tick-") as tmp:
        got = common.child(
            "benchmarks.tick_scale", {"work": tmp, "batches": batches, "history": history}
        )
    rows = got["rows"]
    common.table(
        f"tick with {batches} live batches of 1 item (history {history} items, "
        f"written in {got['history_s']} s); run {got['run_state']}",
        [{k: v for k, v in r.items() if k != "api_by_kind"} for r in rows],
    )
    by = {r["tick"]: r for r in rows}
    for label in ("idle", "idle+history"):
        common.figure(
            f"{label} tick with {batches:,} live batches",
            by[label]["seconds"],
            "s",
            limit=IDLE_LIMIT_S,
            note=f"{by[label]['api_calls']} API calls, {by[label]['sql']} SQL statements"
            + (f", {history:,} finished items of history" if label != "idle" else ""),
        )
    out = {
        "quick": bool(a.quick),
        "batches": batches,
        "history_items": history,
        "ticks": rows,
        "run_state": got["run_state"],
        "items": got["items"],
        "idle_api_calls": by["idle"]["api_calls"],
        "idle_sql": by["idle"]["sql"],
        "idle_history_slowdown": common.ratio(by["idle+history"]["seconds"], by["idle"]["seconds"]),
        "idle_limit_s": IDLE_LIMIT_S,
        "idle_ratio": common.ratio(by["idle"]["seconds"], IDLE_LIMIT_S),
        "idle_history_ratio": common.ratio(by["idle+history"]["seconds"], IDLE_LIMIT_S),
        "finish_api_calls": by["finish"]["api_calls"],
    }
    print(f"wrote {common.save('tick', out)}")
    return out


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
