"""Expansion benchmark: an N-row Parquet table (and the same as CSV) through what a user runs,
each in a fresh process with its peak RSS sampled:

- `plan`: read, check and price every row, count the batches (no ledger, no network);
- `submit`: the same command's work (`shell.submit_spec`: record the run, its items packed
  into batches and the batches' JSONL files written, then one tick: upload each file, create
  each batch).

The floor, in its own process on the same file: pyarrow reads the table in batches, one JSON
request line per row, raw executemany of the item rows into SQLite. `submit` also waits for
the service to accept each batch (the emulator reads every line to count its tokens): that
wait is reported apart (`create_wait_s`), and `own_s` is submit without it (imports and
start-up included). `record_s` is the recording alone (one transaction: the run, its items
and batches, the first request files); the rest of `own_s` is start-up and the tick's own
work. Counting the rows afterwards, to report them, is not timed.

A second reference, `ledger`: the floor's loop, but inserting nanobatch's item rows into the
real ledger schema (its columns, constraints, unique key and indexes). It shows what of
submit's time the database's own work on those rows takes. Peak memory counts the measured
process and any children it starts.

With `--pg URL` (a PostgreSQL server where the URL's user may create databases), the same
figures on PostgreSQL beside them (`pg_*`), each phase in a database of its own: the floor
there is pyarrow, the same JSON line per row and COPY of the same rows into an unindexed
table through psycopg; `pg_ledger` inserts the item rows into the real schema; `pg_submit`
is submit with its ledger on PostgreSQL.

    python -m benchmarks expand [--quick] [--rows 1000000] [--pg postgresql://USER@HOST/DB]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks import common


def _child(args: dict[str, Any]) -> dict[str, Any]:
    work = Path(args["work"])
    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        out = PHASES[args["phase"]](work, args)
        # A phase's own checks of what it did (counting rows) are not part of its time.
        out["seconds"] = round(time.perf_counter() - t0 - out.pop("untimed_s", 0.0), 2)
    out["peak_rss_mib"] = round(sampler.peak_kib / 1024, 1)
    return out


def _spec(work: Path, args: dict[str, Any]) -> Path:
    return common.write_spec(
        work,
        name=f"bench-expand-{Path(args['input']).suffix[1:]}",
        input_file=args["input"],
        output_uri=str(work / "out"),
        size="1K",
        max_requests_per_batch=int(args["per_batch"]),
    )


def _plan(work: Path, args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.planning import load_spec, make_plan

    catalog = load_catalog()
    plan = make_plan(load_spec(_spec(work, args), catalog), catalog)
    return {"items": plan.items, "batches": plan.batches}


def _timed(fn: Any, total: list[float]) -> Any:
    """`fn`, adding the seconds each call takes to total[0]."""

    def timed(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            total[0] += time.perf_counter() - t0

    return timed


def _submit(work: Path, args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.adapters.gemini import GeminiBackend
    from pipeline.adapters.ledger import repo
    from pipeline.shell import commands

    waited = [0.0]
    recorded = [0.0]
    GeminiBackend.create_batch = _timed(GeminiBackend.create_batch, waited)  # type: ignore[method-assign]
    commands.create_run = _timed(commands.create_run, recorded)  # type: ignore[assignment]
    ctx = common.make_context(_ledger_url(work, args), work / "state", args["url"])
    run_id = commands.submit_spec(ctx, _spec(work, args), force=True, use_cache=True)
    t0 = time.perf_counter()
    with ctx.ledger.engine.connect() as conn:
        batches = repo.batch_state_counts(conn, run_id)
        items = repo.item_counts(conn, run_id)
    return {
        "items": sum(items.values()),
        "batches": sum(batches.values()),
        "created": sum(n for state, n in batches.items() if state != "queued"),
        "create_wait_s": round(waited[0], 2),
        "record_s": round(recorded[0], 2),
        "untimed_s": time.perf_counter() - t0,
    }


def _floor(work: Path, args: dict[str, Any]) -> dict[str, Any]:
    floor_loop(work / args["input"], work / "floor.db")
    return {}


def _pg_floor(work: Path, args: dict[str, Any]) -> dict[str, Any]:
    """pyarrow reads the table in batches; a JSON request line per row; COPY into an
    unindexed table through psycopg, one transaction."""
    import psycopg

    with psycopg.connect(_libpq(args["db"])) as conn, conn.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE items (run_id text, key text, row int, prompt text, line text)"
        )
        with cursor.copy("COPY items FROM STDIN") as copy:
            for first, keys, prompts in _table_chunks(work / args["input"]):
                for row, (key, prompt) in enumerate(zip(keys, prompts, strict=True), first):
                    line = json.dumps(
                        {"key": key, "request": {"contents": [{"parts": [{"text": prompt}]}]}}
                    )
                    copy.write_row(("r", key, row, prompt, line))
    return {}


def _libpq(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _ledger_floor(work: Path, args: dict[str, Any]) -> dict[str, Any]:
    """Like the floor, but nanobatch's item rows into the real ledger schema (its columns,
    constraints, indexes and foreign keys, checked against a run row and its batches'
    rows, 10,000 items a batch): what recording the items alone costs."""
    from pipeline.adapters.ledger import db, repo
    from tests.ledger_rows import RUN_INSERT, batch_insert

    engine = db.make_engine(_ledger_url(work, args))
    db.ensure_schema(engine)
    made = 0  # batch ids are 1, 2, ... in a new ledger
    with engine.begin() as conn:
        conn.exec_driver_sql(RUN_INSERT)
        for first, keys, prompts in _table_chunks(work / args["input"]):
            batch = 1 + (first - 1) // 10_000
            for seq in range(made + 1, batch + 1):
                conn.exec_driver_sql(batch_insert(seq))
            made = max(made, batch)
            rows = []
            for row, (key, prompt) in enumerate(zip(keys, prompts, strict=True), first):
                rows.append(("r1", key, row, prompt, "0" * 64, "1:1", "1K", "m", 1300))
            repo.insert_items(conn, rows, state="in_batch", batch_id=batch)
    return {}


def _ledger_url(work: Path, args: dict[str, Any]) -> str:
    return str(args.get("db") or f"sqlite:///{work / 'ledger.db'}")


PHASES = {
    "plan": _plan,
    "submit": _submit,
    "floor": _floor,
    "ledger": _ledger_floor,
    "pg_floor": _pg_floor,
    "pg_ledger": _ledger_floor,
    "pg_submit": _submit,
}


def _table_chunks(path: Path) -> Iterator[tuple[int, list[str], list[str]]]:
    """(first row number, ids, prompts), a pyarrow record batch at a time."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=["id", "prompt"])
    else:
        batches = pacsv.open_csv(path)
    row = 0
    for batch in batches:
        keys = batch.column("id").to_pylist()
        prompts = batch.column("prompt").to_pylist()
        yield row + 1, keys, prompts
        row += len(keys)


def floor_loop(path: Path, db_path: Path) -> None:
    """pyarrow reads the table in batches; a JSON request line per row; executemany."""
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE items (run_id, key, row, prompt, line)")
    for first, keys, prompts in _table_chunks(path):
        params = []
        for row, (key, prompt) in enumerate(zip(keys, prompts, strict=True), first):
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
    p.add_argument(
        "--pg",
        metavar="URL",
        help="expand: also on this PostgreSQL server (a database per phase is made there)",
    )


def _measure(root: Path, name: str, rows_n: int, per_batch: int, url: str) -> dict[str, Any]:
    """plan, submit and the floor on one table, each in a fresh process and folder."""
    out: dict[str, Any] = {"input": name.split(".")[-1], "rows": rows_n}
    for phase in ("floor", "ledger", "plan", "submit"):
        out.update(_phase(root, name, phase, per_batch, url))
    floor = out["floor_s"]
    out["submit_own_s"] = round(out["submit_s"] - out["submit_create_wait_s"], 2)
    out["ratio_plan"] = common.ratio(floor, out["plan_s"])
    out["ratio_submit"] = common.ratio(floor, out["submit_s"])
    out["ratio_submit_own"] = common.ratio(floor, out["submit_own_s"])
    out["ratio_record"] = common.ratio(floor, out["submit_record_s"])
    out["ledger_vs_floor"] = common.ratio(floor, out["ledger_s"])
    return out


def _measure_pg(root: Path, name: str, per_batch: int, url: str, pg: str) -> dict[str, Any]:
    """The floor (COPY), the ledger's item rows and submit on PostgreSQL."""
    out: dict[str, Any] = {}
    for phase in ("pg_floor", "pg_ledger", "pg_submit"):
        with _pg_database(pg, f"bench_expand_{phase}") as db_url:
            out.update(_phase(root, name, phase, per_batch, url, db_url))
    floor = out["pg_floor_s"]
    out["pg_submit_own_s"] = round(out["pg_submit_s"] - out["pg_submit_create_wait_s"], 2)
    out["pg_ratio_submit"] = common.ratio(floor, out["pg_submit_s"])
    out["pg_ratio_submit_own"] = common.ratio(floor, out["pg_submit_own_s"])
    out["pg_ratio_record"] = common.ratio(floor, out["pg_submit_record_s"])
    out["pg_ledger_vs_floor"] = common.ratio(floor, out["pg_ledger_s"])
    return out


def _phase(
    root: Path, name: str, phase: str, per_batch: int, url: str, db: str | None = None
) -> dict[str, Any]:
    """One phase in a fresh process and folder: its figures, named after it."""
    work = root / f"{name.replace('.', '-')}-{phase}"
    work.mkdir()
    (work / name).symlink_to(root / name)
    args = {"work": str(work), "input": name, "per_batch": per_batch, "url": url, "db": db}
    got = common.child("benchmarks.expand", args | {"phase": phase})
    out = {f"{phase}_s": got.pop("seconds"), f"{phase}_peak_rss_mib": got.pop("peak_rss_mib")}
    return out | {f"{phase}_{k}": v for k, v in got.items()}


@contextmanager
def _pg_database(server: str, name: str) -> Iterator[str]:
    """A new, empty database on the server (dropped afterwards): its SQLAlchemy URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = _libpq(server)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        url = make_url(server.replace("postgresql://", "postgresql+psycopg://", 1))
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextmanager
def _emulator(root: Path, name: str) -> Iterator[str]:
    with common.emulator(
        root / f"emu-{name}",
        speed=1.0,
        pending_seconds=86400,
        running_seconds=60,
        nodelay=True,
    ) as (_, url):
        yield url


def run(a: argparse.Namespace) -> dict[str, Any]:
    rows_n = 2000 if a.quick else a.rows
    per_batch = 500 if a.quick else 10_000
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-expand-") as tmp:
        root = Path(tmp)
        write_tables(root, rows_n)
        # Batches stay pending while the run is submitted: otherwise each create makes the
        # emulator render every finished batch's images, which the timing would include.
        for name in ("prompts.parquet", "prompts.csv"):
            # A fresh emulator per table and database: its 100 live batches would otherwise
            # be full.
            with _emulator(root, name) as url:
                result = _measure(root, name, rows_n, per_batch, url)
            if a.pg:
                with _emulator(root, f"pg-{name}") as url:
                    result |= _measure_pg(root, name, per_batch, url, a.pg)
            results.append(result)
    title = "expand: plan and submit vs floor (arrow + json + sqlite executemany; pg_: COPY)"
    common.table(title, results)
    out = {
        "goal_ratio": 0.45,
        "goal_peak_rss_mib": 300,
        "quick": bool(a.quick),
        "inputs": results,
    }
    print(f"wrote {common.save('expand', out)}")
    return out


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
