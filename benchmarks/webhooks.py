"""Webhooks versus cron (issue 18): N batches whose ends are spread evenly over S seconds on an
in-process emulator (speed 1, so its endTime is wall time), harvested either by `listen`
(the emulator pushes a signed event per batch end to a live listen on loopback) or by cron
ticks every C seconds. Per batch: seconds from its end on the service (the ledger's
`ended_at`, its endTime) to its last image stored (`harvested_at`); p50, p99 and max; and the
API calls each way took to notice and harvest (get, list, download) besides the creates.

The batches are created one by one (staggered `not_before`, a submitter thread), so each
ends about the same time after its create; cron's first tick is C seconds after the first
create. Each mode runs in a fresh process on a SQLite ledger.

    python -m benchmarks webhooks [--quick] [--webhook-batches 100] [--webhook-spread 60]
        [--webhook-cron 60]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks import common

PENDING_S = 2.0
RUNNING_S = 3.0
ITEMS_PER_BATCH = 2


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.emulator import Emulator

    common.emulator_nodelay()
    common.quiet_logs()
    work = Path(args["work"])
    n = int(args["batches"])
    emu = Emulator(
        api_key=common.EMULATOR_KEY,
        image_scale=0.01,
        enqueued_token_quota=10**12,
        max_live_batches=n + 10,
        pending_seconds=PENDING_S,
        running_seconds=RUNNING_S,
        data_dir=work / "emu",
    ).start()
    try:
        ctx = common.make_context(
            f"sqlite:///{work / 'ledger.db'}", work / "state", emu.url, max_live_batches=n + 10
        )
        run_id, catalog = _record(ctx, work, n)
        mark = len(emu.request_log)
        if args["mode"] == "listen":
            waited = _with_listen(ctx, catalog, emu, run_id, n, float(args["spread"]))
        else:
            waited = _with_cron(ctx, catalog, run_id, n, float(args["spread"]), float(args["cron"]))
        kinds = Counter(e["kind"] for e in emu.request_log[mark:] if "method" in e)
        return {"latencies": _latencies(ctx), "api_by_kind": dict(kinds), "wall_s": waited}
    finally:
        emu.stop()


def _record(ctx: Any, work: Path, n: int) -> tuple[str, Any]:
    """A run of n batches of ITEMS_PER_BATCH items, recorded but not yet created."""
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec

    common.write_prompts_csv(work / "prompts.csv", n * ITEMS_PER_BATCH, prefix="w")
    spec = common.write_spec(
        work,
        name="bench-webhooks",
        input_file="prompts.csv",
        output_uri=str(work / "out"),
        size="1K",
        max_requests_per_batch=ITEMS_PER_BATCH,
    )
    catalog = load_catalog()
    run_id, _ = create_run(ctx, load_spec(spec, catalog), catalog, force=True, use_cache=False)
    return run_id, catalog


def _stagger(ctx: Any, run_id: str, spread: float) -> threading.Thread:
    """Give batch i a not_before i * spread / n from now, and create each when it comes due
    (a thread running the submission pass alone, as a tick's scheduler step would)."""
    from pipeline.adapters.ledger import repo
    from pipeline.shell.submit import Submitter

    with ctx.ledger.engine.begin() as conn:
        batches = repo.batches_of_run(conn, run_id)
        start = ctx.now()
        for i, batch in enumerate(batches):
            due = start + timedelta(seconds=i * spread / len(batches))
            repo.update_batch(conn, batch.id, not_before=due)

    def submit() -> None:
        while True:
            with ctx.ledger.engine.connect() as conn:
                run = repo.get_run(conn, run_id)
                left = repo.batches_in(conn, ["queued", "submitting"], run_id)
            if not left:
                return
            Submitter(ctx).run({run_id: run})
            time.sleep(0.05)

    thread = threading.Thread(target=submit, name="bench-submitter", daemon=True)
    thread.start()
    return thread


def _harvested(ctx: Any, run_id: str) -> int:
    from pipeline.adapters.ledger import repo

    with ctx.ledger.engine.connect() as conn:
        return repo.batch_state_counts(conn, run_id).get("harvested", 0)


def _with_cron(ctx: Any, catalog: Any, run_id: str, n: int, spread: float, every: float) -> float:
    from pipeline.shell.tick import tick

    t0 = time.monotonic()
    submitter = _stagger(ctx, run_id, spread)
    k = 1
    while _harvested(ctx, run_id) < n and time.monotonic() - t0 < spread + 10 * every:
        time.sleep(max(0.0, t0 + k * every - time.monotonic()))
        tick(ctx, catalog)
        k += 1
    submitter.join(timeout=30)
    return round(time.monotonic() - t0, 1)


def _with_listen(ctx: Any, catalog: Any, emu: Any, run_id: str, n: int, spread: float) -> float:
    from google import genai

    from pipeline.shell.listen import bind, build_receiver, make_app, make_server

    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/gemini-webhook"
    client = genai.Client(api_key=common.EMULATOR_KEY, http_options={"base_url": emu.url})
    made = client.webhooks.create(uri=url, subscribed_events=["batch.succeeded"])
    ctx.settings = ctx.settings.with_overrides(webhook_secrets=(str(made.new_signing_secret),))
    server = make_server(make_app(build_receiver(ctx, catalog, workers=2), "/gemini-webhook"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    t0 = time.monotonic()
    submitter = _stagger(ctx, run_id, spread)
    while _harvested(ctx, run_id) < n and time.monotonic() - t0 < spread + 120:
        time.sleep(0.1)
    waited = round(time.monotonic() - t0, 1)
    submitter.join(timeout=30)
    server.should_exit = True
    thread.join(timeout=60)
    return waited


def _latencies(ctx: Any) -> list[float]:
    """Seconds from each harvested batch's end (service endTime) to its harvest, sorted."""
    from pipeline.adapters.ledger import repo
    from pipeline.core.values import as_utc

    with ctx.ledger.engine.connect() as conn:
        rows = conn.execute(
            repo.BATCHES.select().where(repo.BATCHES.c.state == "harvested")
        ).fetchall()
    return sorted(
        round((as_utc(r.harvested_at) - as_utc(r.ended_at)).total_seconds(), 3) for r in rows
    )


def _summary(latencies: list[float]) -> dict[str, Any]:
    from pipeline.shell.metrics import quantile

    return {
        "batches": len(latencies),
        "p50_s": round(quantile(latencies, 0.5), 2),
        "p99_s": round(quantile(latencies, 0.99), 2),
        "max_s": round(max(latencies), 2) if latencies else None,
    }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--webhook-batches", type=int, default=100, help="webhooks: batches")
    p.add_argument(
        "--webhook-spread", type=float, default=60.0, help="webhooks: seconds the ends span"
    )
    p.add_argument("--webhook-cron", type=float, default=60.0, help="webhooks: cron interval s")


def run(a: argparse.Namespace) -> dict[str, Any]:
    n = 10 if a.quick else a.webhook_batches
    spread = 5.0 if a.quick else a.webhook_spread
    cron = 5.0 if a.quick else a.webhook_cron
    modes: dict[str, Any] = {}
    for mode in ("listen", "cron"):
        with tempfile.TemporaryDirectory(prefix=f"bench-webhooks-{mode}-") as tmp:
            args = {"work": tmp, "batches": n, "spread": spread, "cron": cron, "mode": mode}
            got = common.child("benchmarks.webhooks", args)
        kinds = got["api_by_kind"]
        noticing = sum(kinds.get(k, 0) for k in ("get", "list", "download"))
        modes[mode] = _summary(got["latencies"]) | {
            "api_calls": sum(kinds.values()),
            "get_list_download": noticing,
            "api_by_kind": kinds,
            "wall_s": got["wall_s"],
        }
    label = {"listen": "listen (webhooks)", "cron": f"cron tick every {cron:g} s"}
    common.table(
        f"{n} batches of {ITEMS_PER_BATCH} items ending over {spread:g} s: batch end -> last "
        "image stored",
        [
            {"mode": label[m]} | {k: v for k, v in r.items() if k != "api_by_kind"}
            for m, r in modes.items()
        ],
    )
    out = {
        "quick": bool(a.quick),
        "batches": n,
        "items_per_batch": ITEMS_PER_BATCH,
        "spread_s": spread,
        "cron_interval_s": cron,
        "modes": modes,
        "listen_p50_s": modes["listen"]["p50_s"],
        "listen_p99_s": modes["listen"]["p99_s"],
        "cron_p50_s": modes["cron"]["p50_s"],
        "cron_p99_s": modes["cron"]["p99_s"],
    }
    print(f"wrote {common.save('webhooks', out)}")
    return out


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
