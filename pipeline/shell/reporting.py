"""Rendering the account: `report` in table, json, jsonl, csv and parquet, the run's tables
beside its images (`manifest.parquet`, `rejects.csv`, laid out as `location` says), and
`status`. Streams item rows from the ledger, so
memory does not grow with the number of items.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from collections.abc import Container, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.storage import ObjectStore
from pipeline.core import report
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.expand import effective_size
from pipeline.core.values import as_utc, day_start, nanos_to_usd, usd_to_nanos
from pipeline.shell import location, manifest
from pipeline.shell.context import Context
from pipeline.shell.metrics import run_metrics

FORMATS = ("table", "json", "jsonl", "csv", "parquet")


def _entries(ctx: Context, run_id: str) -> Iterator[dict[str, Any]]:
    with ctx.engine.connect() as conn:
        yield from repo.report_rows(conn, run_id)


def render_report(
    ctx: Context, run_ref: str, fmt: str, out: IO[str] | None, out_path: Path | None
) -> None:
    """Write the report of a run in `fmt` to `out` (text formats) or `out_path`."""
    with ctx.engine.connect() as conn:
        run = repo.get_run(conn, run_ref)
        saved = repo.cache_savings(conn, run.id)
    summary = report.Summary(rejected=run.rejected_count, saved_by_cache_nanos=saved)
    rows = report.rows_and_summary(_entries(ctx, run.id), summary)
    if fmt == "parquet":
        assert out_path is not None
        manifest.write_parquet(rows, out_path, REPORT_SCHEMA)
        return
    stream = out or sys.stdout
    if fmt == "json":
        _write_json(stream, run, rows, summary)
    elif fmt == "jsonl":
        for row in rows:
            stream.write(json.dumps(row) + "\n")
    elif fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=list(report.ITEM_FIELDS))
        writer.writeheader()
        writer.writerows(report.csv_row(report.flat_row(row)) for row in rows)
    else:
        _write_table(stream, run, rows, summary)


def _write_json(
    stream: IO[str], run: repo.RunRow, rows: Iterator[dict[str, Any]], summary: report.Summary
) -> None:
    """One JSON object, written item by item (the items array is never held whole)."""
    stream.write(json.dumps({"run": run.id, "job": run.job, "model": run.model})[:-1])
    stream.write(', "items": [')
    for i, row in enumerate(rows):
        crashpoint("report.row")
        stream.write(("," if i else "") + "\n  " + json.dumps(row))
    stream.write('\n], "summary": ' + json.dumps(summary.asdict()) + "}\n")


def _write_table(
    stream: IO[str], run: repo.RunRow, rows: Iterator[dict[str, Any]], summary: report.Summary
) -> None:
    stream.write(f"run {run.id}  job {run.job}  model {run.model}\n")
    stream.write(report.TABLE_HEADER + "\n")
    for row in rows:
        crashpoint("report.row")
        stream.write(report.table_line(row) + "\n")
    s = summary.asdict()
    stream.write(
        f"\n{s['items']} items: {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['pending']} pending, {s['cancelled']} cancelled, {s['rejected']} rejected rows\n"
        f"cost ${s['cost_usd']:.4f} at batch price (standard price would be "
        f"${s['standard_cost_usd']:.4f}); tokens {s['tokens']}\n"
    )
    if s["cached"]:
        stream.write(
            f"{s['cached']} served from the prompt cache, saving ${s['saved_by_cache_usd']:.4f}\n"
        )
    stream.write(_rates_note(run))


def _rates_note(run: repo.RunRow) -> str:
    """The batch rates the costs above were computed at, so a reader can check them."""
    catalog = load_catalog()
    lines = ["batch price per 1M tokens (image = IMAGE output, text and thinking at one rate):"]
    for name in dict.fromkeys(m for m in (run.model, run.fallback_model) if m):
        r = catalog.get(name).batch
        lines.append(
            f"  {name}: input ${r.input}, image ${r.image_output}, text/thinking ${r.text_output}"
        )
    return "\n".join(lines) + "\n"


REPORT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int64()),
        ("model", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_image_tokens", pa.int64()),
        ("output_text_tokens", pa.int64()),
        ("thinking_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("cached", pa.bool_()),
        ("error", pa.string()),
        ("references", pa.list_(pa.string())),
        ("seed", pa.int64()),
        ("duplicates", pa.int64()),
    ]
)


def write_run_manifest(ctx: Context, run: repo.RunRow) -> None:
    """After a harvest: rewrite the run's manifest beside its images (see `write_tables`)."""
    with ctx.engine.connect() as conn:
        write_tables(ctx, conn, run, manifest=True, rejects=False)


def write_tables(
    ctx: Context,
    conn: Any,
    run: repo.RunRow,
    *,
    manifest: bool,
    rejects: bool,
    present: Container[str] | None = None,
) -> None:
    """Write the run's tables at its output location, reading the ledger through `conn`
    (at submit, the recording transaction: the new run's rows are not committed yet).

    A location with one run: `manifest.parquet` (one row per harvested item) and/or
    `rejects.csv`, as asked, exactly as they always were. A location several runs share
    (`location`): the run's own rows in manifest-<run>.parquet and rejects-<run>.csv, and
    every run's rows in manifest.parquet and rejects.csv with a `run` column, all rebuilt
    from the ledger, so no run's rows are lost whoever writes last. With `present` (the
    per-run tables a listing of the location found, given at submit), another run's own
    tables are written too when they are missing: the location has just become shared, and
    the plain files it wrote before are about to hold everyone's rows.
    """
    store = ctx.store(run.output_uri)
    runs = location.runs_at(ctx, conn, run.output_uri)
    if run.id not in runs:
        runs.append(run.id)
    if len(runs) == 1:
        if manifest:
            _put_manifest(store, location.MANIFEST, conn, runs, merged=False)
        if rejects:
            _put_rejects(store, location.REJECTS, conn, runs, merged=False)
        return
    for other in runs:
        ours = other == run.id
        if ours or (
            present is not None and location.per_run(location.MANIFEST, other) not in present
        ):
            _put_manifest(
                store, location.per_run(location.MANIFEST, other), conn, [other], merged=False
            )
        if ours or (
            present is not None and location.per_run(location.REJECTS, other) not in present
        ):
            _put_rejects(
                store, location.per_run(location.REJECTS, other), conn, [other], merged=False
            )
    _put_manifest(store, location.MANIFEST, conn, runs, merged=True)
    _put_rejects(store, location.REJECTS, conn, runs, merged=True)


def _put_manifest(
    store: ObjectStore, name: str, conn: Any, run_ids: list[str], *, merged: bool
) -> None:
    """Stream the harvested items of `run_ids` (in order) into a Parquet file named `name`."""

    catalog = load_catalog()

    def harvested() -> Iterator[dict[str, Any]]:
        for run_id in run_ids:
            for entry in repo.report_rows(conn, run_id, finished_only=True):
                item = entry["item"]
                row = report.item_row(item, entry)
                row.update(
                    prompt=item.prompt,
                    aspect_ratio=item.aspect_ratio,
                    image_size=_size_sent(catalog, row["model"], item.image_size),
                )
                if merged:
                    row["run"] = run_id
                crashpoint("report.manifest")
                yield row

    schema = manifest.MERGED_MANIFEST_SCHEMA if merged else manifest.MANIFEST_SCHEMA
    with tempfile.TemporaryDirectory(prefix="nanobatch-") as tmp:
        path = Path(tmp) / name
        manifest.write_parquet(harvested(), path, schema)
        store.put_file(name, path, content_type=manifest.PARQUET_CONTENT_TYPE)


def _put_rejects(
    store: ObjectStore, name: str, conn: Any, run_ids: list[str], *, merged: bool
) -> None:
    """Stream the rejects of `run_ids` (in order) into a CSV file named `name`."""

    def rows() -> Iterator[tuple[object, ...]]:
        for run_id in run_ids:
            for r in repo.rejects_of_run(conn, run_id):
                yield (r.row, r.key, r.reason, run_id) if merged else (r.row, r.key, r.reason)

    header = manifest.MERGED_REJECTS_HEADER if merged else manifest.REJECTS_HEADER
    with tempfile.TemporaryDirectory(prefix="nanobatch-") as tmp:
        path = Path(tmp) / name
        manifest.write_csv(rows(), path, header)
        store.put_file(name, path, content_type=manifest.CSV_CONTENT_TYPE)


def _size_sent(catalog: Catalog, model: str, size: str) -> str:
    """The size the model that made the image was asked for: a fallback model may take none
    ("") or not the primary's."""
    try:
        return effective_size(catalog.get(model), size)
    except KeyError:  # a model no longer in the catalog: what the item asked for
        return size


def run_status(ctx: Context, run: repo.RunRow) -> dict[str, Any]:
    """The `status --json` entry of one run."""
    from pipeline.shell.budget import waiting_reason

    with ctx.engine.connect() as conn:
        counts = repo.item_counts(conn, run.id)
        batches = repo.batch_state_counts(conn, run.id)
        spent, reserved = repo.run_spend(conn, run.id)
        queued = repo.batches_in(conn, ["queued"], run.id)
        cached = repo.cached_count(conn, run.id)
        daily = _daily(ctx, conn)
        metrics = run_metrics(conn, run.id)
    held = held_entry(run)
    waiting = waiting_reason(ctx, queued[0], run) if queued and run.state == "active" else None
    if held is not None:
        waiting = held_line(ctx, run)
    items = {
        "pending": counts.get("queued", 0) + counts.get("in_batch", 0),
        "succeeded": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0) + counts.get("failed_final", 0),
        "failed_final": counts.get("failed_final", 0),
        "cancelled": counts.get("cancelled", 0),
        "rejected": run.rejected_count,
    }
    budget = run.budget_nanos
    return {
        "run": run.id,
        "job": run.job,
        "state": run.state,
        "model": run.model,
        "output": run.output_uri,
        "items": items,
        "batches": batches,
        "cost_usd": nanos_to_usd(spent),
        "reserved_usd": nanos_to_usd(reserved),
        "estimated_usd": nanos_to_usd(run.estimated_nanos),
        "budget_usd": nanos_to_usd(budget) if budget is not None else None,
        "budget_left_usd": nanos_to_usd(budget - spent - reserved) if budget is not None else None,
        "waiting": waiting,
        "held": held,
        "cached": cached,
        "daily": daily,
        "metrics": metrics,
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "age_s": round((ctx.now() - as_utc(run.created_at)).total_seconds(), 1),
    }


def held_entry(run: repo.RunRow) -> dict[str, Any] | None:
    """`status --json`'s `held`: why an active run is held, since when, and its next try."""
    if run.state != "active" or run.hold_reason is None:
        return None
    return {
        "reason": run.hold_reason,
        "detail": run.hold_detail,
        "since": _iso(run.hold_since),
        "retry_at": _iso(run.hold_not_before),
        "tries": run.hold_tries,
    }


def held_line(ctx: Context, run: repo.RunRow) -> str:
    """`status`'s one `waiting` line for a held run: its problem and when it is retried."""
    until = run.hold_not_before
    if until is None or as_utc(until) <= ctx.now():
        when = "retrying at the next tick"
    else:
        when = f"retrying after {as_utc(until):%Y-%m-%d %H:%M:%S} UTC"
    tries = f"{run.hold_tries} failed {'try' if run.hold_tries == 1 else 'tries'}"
    return (
        f"held ({run.hold_reason}): {run.hold_detail}; {when} ({tries}; "
        f"`nanobatch cancel {run.id}` ends the run)"
    )


def _daily(ctx: Context, conn: Any) -> dict[str, Any] | None:
    """Today's (UTC) spend across runs against NANOBATCH_DAILY_BUDGET_USD, when set."""
    cap = ctx.settings.daily_budget_usd
    if cap is None:
        return None
    spent, reserved = repo.day_spend(conn, day_start(ctx.now()))
    cap_nanos = usd_to_nanos(cap)
    return {
        "cap_usd": float(cap),
        "spent_usd": nanos_to_usd(spent),
        "reserved_usd": nanos_to_usd(reserved),
        "left_usd": nanos_to_usd(cap_nanos - spent - reserved),
    }


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
