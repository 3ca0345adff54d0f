"""Shared helpers of the benchmarks: RSS sampling, an emulator subprocess, job specs, a
Context on a given ledger, child processes that report JSON, and result files/tables."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EMULATOR_KEY = "bench-key"


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def tree_rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process and of all its descendants, in KiB: work handed to a child
    process counts. Pages a forked child shares with its parent are counted twice, so this
    errs high."""
    root = os.getpid() if pid == "self" else int(pid)
    total, todo = 0, [root]
    while todo:
        current = todo.pop()
        total += rss_kib(current)
        todo.extend(_children(current))
    return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return found


class RssSampler(threading.Thread):
    """Samples VmRSS of a process and its descendants every `interval` s and keeps the peak
    since the last reset."""

    def __init__(self, pid: int | str = "self", interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kib = tree_rss_kib(pid)
        self.halt = threading.Event()

    def reset(self) -> int:
        old, self.peak_kib = self.peak_kib, tree_rss_kib(self.pid)
        return old

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self.halt.set()
        self.join()
        self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
        return round(self.peak_kib / 1024, 1)


@contextmanager
def peak_rss() -> Iterator[RssSampler]:
    """Sample this process's RSS while the block runs."""
    sampler = RssSampler()
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


_NODELAY_MAIN = (
    "import sys; from benchmarks.common import emulator_nodelay; emulator_nodelay(); "
    "from pipeline.emulator.__main__ import main; main(sys.argv[1:])"
)


def emulator_nodelay() -> None:
    """TCP_NODELAY on the emulator's sockets (in this process). Without it every response
    whose body follows its headers in a second small write waits ~40 ms for a delayed ACK
    (Nagle), which the real service does not: that would time the loopback, not nanobatch."""
    from pipeline.emulator.server import Handler

    Handler.disable_nagle_algorithm = True


@contextmanager
def emulator(
    data_dir: Path,
    *,
    image_scale: float = 0.1,
    speed: float = 1000.0,
    pending_seconds: float = 1.0,
    running_seconds: float = 1.0,
    max_live_batches: int = 100,
    nodelay: bool = False,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m pipeline.emulator` in a subprocess on a free port; yields (process, url).
    With `nodelay`, its sockets get TCP_NODELAY (see emulator_nodelay)."""
    launch = ["-m", "pipeline.emulator"]
    if nodelay:
        launch = ["-c", _NODELAY_MAIN]
    cmd = [
        sys.executable,
        *launch,
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--image-scale",
        str(image_scale),
        "--speed",
        str(speed),
        "--pending-seconds",
        str(pending_seconds),
        "--running-seconds",
        str(running_seconds),
        "--enqueued-token-quota",
        str(10**12),
        "--max-live-batches",
        str(max_live_batches),
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        # Keep draining its output so a full pipe never blocks the emulator.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_spec(
    folder: Path,
    *,
    name: str,
    input_file: str,
    output_uri: str,
    model: str = "gemini-3.1-flash-image-preview",
    size: str = "2K",
    max_requests_per_batch: int = 10_000,
    max_enqueued_tokens: int = 10**11,
    extra_input: str = "",
) -> Path:
    """A job spec whose template is `{prompt}` over columns id, prompt."""
    spec = folder / f"{name}.toml"
    spec.write_text(
        f'name = "{name}"\nmodel = "{model}"\n\n'
        f'[input]\npath = "{input_file}"\nid_column = "id"\nprompt_column = "prompt"\n'
        f"{extra_input}\n"
        f'[image]\naspect_ratio = "1:1"\nsize = "{size}"\n\n'
        f'[output]\nuri = "{output_uri}"\n\n'
        f"[limits]\nmax_attempts = 3\nbudget_usd = 1000000.0\n"
        f"max_requests_per_batch = {max_requests_per_batch}\n"
        f"max_enqueued_tokens = {max_enqueued_tokens}\n"
    )
    return spec


def write_prompts_csv(path: Path, n: int, prefix: str = "bench") -> None:
    with path.open("w") as fh:
        fh.write("id,prompt\n")
        for i in range(n):
            fh.write(f"{prefix}-{i:07d},benchmark image number {i} of {prefix}\n")


def make_context(
    database_url: str,
    state_dir: Path,
    base_url: str | None = None,
    workers: int = 4,
    **overrides: Any,
) -> Any:
    """A Context on `database_url` (schema ensured) talking to `base_url`; `overrides` are
    further Settings fields (e.g. max_live_batches)."""
    import uuid

    from pipeline.adapters.config import Settings
    from pipeline.adapters.ledger import db
    from pipeline.adapters.ledger.ledger import Ledger
    from pipeline.shell.context import Context

    settings = Settings(
        database_url=database_url,
        api_key=EMULATOR_KEY,
        base_url=base_url,
        log_format="json",
        state_dir=state_dir,
        harvest_workers=workers,
        worker_id=f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        **overrides,
    )
    engine = db.make_engine(database_url)
    db.ensure_schema(engine)
    return Context(settings=settings, ledger=Ledger(engine))


class QueryCounter:
    """Counts the SQL statements an engine runs (executemany counts once)."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count = 0

        @event.listens_for(engine, "before_cursor_execute")
        def _count(*_: Any) -> None:
            self.count += 1

    def take(self) -> int:
        """Statements since the last take."""
        n, self.count = self.count, 0
        return n


def fill_finished_run(
    engine: Any, run_id: str, n: int, *, model: str = "gemini-3.1-flash-image-preview"
) -> float:
    """A finished run of `n` succeeded items, each with one recorded attempt, in one batch,
    written by raw executemany (no emulator): history, or a large run to report on.
    Returns seconds taken."""
    from datetime import UTC, datetime

    from sqlalchemy import func, insert, select

    from pipeline.adapters.ledger import repo

    t0 = time.perf_counter()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        repo.insert_run(
            conn,
            {
                "id": run_id,
                "identity": f"bench-{run_id}",
                "job": run_id,
                "state": "finished",
                "model": model,
                "spec_path": "bench.toml",
                "spec_json": "{}",
                "input_sha256": "0" * 64,
                "output_uri": f"/tmp/{run_id}",
                "run_date": now.strftime("%Y-%m-%d"),
                "max_attempts": 3,
                "max_enqueued_tokens": 10**11,
                "max_requests_per_batch": max(n, 1),
                "max_batch_bytes": 2 * 10**9,
                "budget_nanos": None,
                "created_at": now,
                "finished_at": now,
                "item_count": n,
            },
        )
        batch_id = conn.execute(
            insert(repo.BATCHES)
            .values(
                run_id=run_id,
                seq=1,
                model=model,
                display_name=f"nb-{run_id}-00001",
                state="harvested",
                remote_name=f"batches/{run_id}",
                item_count=n,
                est_tokens=1290 * n,
                est_nanos=19_500_000 * n,
                created_at=now,
                finished_at=now,
            )
            .returning(repo.BATCHES.c.id)
        ).scalar_one()
        first = conn.execute(select(func.coalesce(func.max(repo.ITEMS.c.id), 0))).scalar_one()
        step = 20_000
        for start in range(0, n, step):
            stop = min(n, start + step)
            items = [
                {
                    "id": first + 1 + i,
                    "run_id": run_id,
                    "key": f"{run_id}-{i:07d}",
                    "row": i + 1,
                    "prompt": f"benchmark image number {i} of {run_id}",
                    "prompt_sha256": f"{i:064x}",
                    "aspect_ratio": "1:1",
                    "image_size": "1K",
                    "model": model,
                    "est_tokens": 1290,
                    "state": "succeeded",
                    "final": False,
                    "tries": 1,
                    "fallback_used": False,
                    "cached": False,
                    "batch_id": batch_id,
                    "uri": f"/tmp/{run_id}/{run_id}-{i:07d}.png",
                    "sha256": f"{i:064x}",
                    "finished_at": now,
                }
                for i in range(start, stop)
            ]
            conn.execute(insert(repo.ITEMS), items)
            attempts = [
                {
                    "item_id": first + 1 + i,
                    "batch_id": batch_id,
                    "model": model,
                    "outcome": "succeeded",
                    "input_tokens": 10,
                    "output_image_tokens": 1290,
                    "output_text_tokens": 0,
                    "thinking_tokens": 0,
                    "cost_nanos": 19_500_000,
                    "standard_nanos": 39_000_000,
                    "recorded_at": now,
                }
                for i in range(start, stop)
            ]
            conn.execute(insert(repo.ATTEMPTS), attempts)
    return round(time.perf_counter() - t0, 2)


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database nb_bench_<hex> at 127.0.0.1:5432, dropped afterwards."""
    import uuid

    import psycopg

    name = f"nb_bench_{uuid.uuid4().hex[:12]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def quiet_logs() -> None:
    """Send nanobatch's structured logs nowhere (they would flood the tables)."""
    import logging

    import structlog

    logging.disable(logging.CRITICAL)
    structlog.configure(
        logger_factory=structlog.ReturnLoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )


def child(
    module: str,
    args: dict[str, Any],
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run `python -m module --child JSON` and return the JSON it prints last."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(args)]
    full_env = os.environ | (env or {})
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    last = [ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1]
    result: dict[str, Any] = json.loads(last)
    return result


def child_main(fn: Any) -> bool:
    """In a child: when argv is `--child JSON`, run fn(args) and print its JSON; True if so."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        quiet_logs()
        result = fn(json.loads(sys.argv[2]))
        print(json.dumps(result), flush=True)
        return True
    return False


def script_main(child: Any, add_args: Any, run: Any, doc: str | None) -> None:
    """`python -m benchmarks.<name>`: a measured child when called with `--child JSON`,
    otherwise the benchmark on its own with its options."""
    if child_main(child):
        return
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true")
    add_args(parser)
    run(parser.parse_args())


def ratio(value: float, floor: float) -> float:
    return round(value / floor, 3) if floor else 0.0


def save(name: str, data: dict[str, Any]) -> Path:
    folder = RESULTS / "quick" if data.get("quick") else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} | data
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows (dicts with the same keys) as an aligned table."""
    print(f"\n== {title}")
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    floor: float | None = None,
    limit: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Print one headline figure with its floor (at least) or limit (at most) and the ratio
    value/floor or value/limit, and whether it meets it; returns them as a dict."""
    bound, word = (floor, "floor") if floor is not None else (limit, "limit")
    assert bound is not None, "a figure needs a floor or a limit"
    r = ratio(value, bound)
    ok = value >= bound if floor is not None else value <= bound
    shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"
    line = (
        f"FIGURE {name}: {shown} {unit}, {word} {bound:,} {unit}, ratio {r} "
        f"({'meets' if ok else 'MISSES'} it)"
    )
    print(line + (f"; {note}" if note else ""), flush=True)
    return {"value": value, word: bound, "ratio": r, "ok": ok}
