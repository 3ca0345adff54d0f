"""Reports and statuses from the ledger: `report` in table, json, jsonl, csv and parquet, the
run's tables beside its images (`manifest.parquet`, `rejects.csv`, laid out as `location`
says), `status`, and the plan, status and report printing of the CLI.

What the rows hold is `core.report`'s and how each format is written is `adapters.writers`';
this module reads the ledger (item rows streamed in column chunks, so memory does not grow
with the number of items) and hands them from one to the other.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Container, Iterator
from pathlib import Path
from typing import IO, Any

import click

from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import TableReads
from pipeline.adapters.storage import ObjectStore
from pipeline.core import report
from pipeline.core.catalog import load_catalog
from pipeline.core.errors import UsageError
from pipeline.core.reasons import WaitCode, Waiting
from pipeline.core.report import printable
from pipeline.core.values import as_utc, day_start, nanos_to_usd, usd_to_nanos
from pipeline.shell import location
from pipeline.shell.context import Context
from pipeline.shell.metrics import metrics_of
from pipeline.shell.planning import Plan

FORMATS = ("table", "json", "jsonl", "csv", "parquet")

# `adapters.writers` (and so pyarrow, a fifth of a second) is imported where a file is
# written, not here: `status` and `plan` print through this module and need neither.


def render_report(
    ctx: Context, run_ref: str, fmt: str, out: IO[str] | None, out_path: Path | None
) -> None:
    """Write the report of a run in `fmt` to `out` (text formats) or `out_path`."""
    from pipeline.adapters import writers

    run, saved = ctx.ledger.run_and_savings(run_ref)
    summary = report.Summary(rejected=run.rejected_count, saved_by_cache_nanos=saved)
    chunks = report.columns_and_summary(ctx.ledger.report_columns(run.id), summary)
    if fmt == "parquet":
        assert out_path is not None
        writers.write_parquet_columns(chunks, out_path, writers.REPORT_SCHEMA)
        return
    stream = out or sys.stdout
    if fmt == "json":
        writers.write_json(
            stream, {"run": run.id, "job": run.job, "model": run.model}, chunks, summary
        )
    elif fmt == "jsonl":
        writers.write_jsonl(stream, chunks)
    elif fmt == "csv":
        writers.write_report_csv(stream, chunks)
    else:
        writers.write_table(
            stream,
            f"run {run.id}  job {run.job}  model {run.model}",
            chunks,
            lambda: (
                report.table_footer(summary.asdict())
                + report.rates_note(load_catalog(), (run.model, run.fallback_model))
            ),
        )


def write_run_manifest(ctx: Context, run: repo.RunRow) -> None:
    """After a harvest: rewrite the run's manifest beside its images (see `write_tables`)."""
    with ctx.ledger.table_reads() as reads:
        write_tables(ctx, reads, run, manifest=True, rejects=False)


def write_tables(
    ctx: Context,
    reads: TableReads,
    run: repo.RunRow,
    *,
    manifest: bool,
    rejects: bool,
    present: Container[str] | None = None,
) -> None:
    """Write the run's tables at its output location, reading the ledger through `reads`
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
    runs = location.runs_among(ctx, reads.run_outputs(), run.output_uri)
    if run.id not in runs:
        runs.append(run.id)
    if len(runs) == 1:
        if manifest:
            _put_manifest(store, location.MANIFEST, reads, runs, merged=False)
        if rejects:
            _put_rejects(store, location.REJECTS, reads, runs, merged=False)
        return
    for other in runs:
        ours = other == run.id
        if ours or (
            present is not None and location.per_run(location.MANIFEST, other) not in present
        ):
            _put_manifest(
                store, location.per_run(location.MANIFEST, other), reads, [other], merged=False
            )
        if ours or (
            present is not None and location.per_run(location.REJECTS, other) not in present
        ):
            _put_rejects(
                store, location.per_run(location.REJECTS, other), reads, [other], merged=False
            )
    _put_manifest(store, location.MANIFEST, reads, runs, merged=True)
    _put_rejects(store, location.REJECTS, reads, runs, merged=True)


def _put_manifest(
    store: ObjectStore, name: str, reads: TableReads, run_ids: list[str], *, merged: bool
) -> None:
    """Stream the harvested items of `run_ids` (in order) into a Parquet file named `name`."""
    from pipeline.adapters import writers

    catalog = load_catalog()

    def harvested() -> Iterator[report.Columns]:
        for run_id in run_ids:
            for chunk in reads.report_columns(run_id, finished_only=True, manifest=True):
                columns = report.manifest_columns(chunk, report.item_columns(chunk), catalog)
                if merged:
                    columns["run"] = [run_id] * len(columns["key"])
                yield columns

    schema = writers.MERGED_MANIFEST_SCHEMA if merged else writers.MANIFEST_SCHEMA
    with tempfile.TemporaryDirectory(prefix="nanobatch-") as tmp:
        path = Path(tmp) / name
        writers.write_parquet_columns(
            harvested(), path, schema, each_row=lambda: crashpoint("report.manifest")
        )
        store.put_file(name, path, content_type=writers.PARQUET_CONTENT_TYPE)


def _put_rejects(
    store: ObjectStore, name: str, reads: TableReads, run_ids: list[str], *, merged: bool
) -> None:
    """Stream the rejects of `run_ids` (in order) into a CSV file named `name`."""
    from pipeline.adapters import writers

    def rows() -> Iterator[tuple[object, ...]]:
        for run_id in run_ids:
            for r in reads.rejects(run_id):
                yield (r.row, r.key, r.reason, run_id) if merged else (r.row, r.key, r.reason)

    header = writers.MERGED_REJECTS_HEADER if merged else writers.REJECTS_HEADER
    with tempfile.TemporaryDirectory(prefix="nanobatch-") as tmp:
        path = Path(tmp) / name
        writers.write_csv(rows(), path, header)
        store.put_file(name, path, content_type=writers.CSV_CONTENT_TYPE)


# ── status ───────────────────────────────────────────────────────────────────


def run_status(ctx: Context, run: repo.RunRow) -> dict[str, Any]:
    """The `status --json` entry of one run. Every figure is answered from an index or from
    the run's batches, so a run of a million items takes well under a second."""
    from pipeline.shell.budget import waiting_reason

    cap = ctx.settings.daily_budget_usd
    figures = ctx.ledger.status_figures(run.id, None if cap is None else day_start(ctx.now()))
    counts, spent, reserved = figures.counts, figures.spent_nanos, figures.reserved_nanos
    queued = figures.first_queued
    held = report.held_entry(run)
    waiting = waiting_reason(ctx, queued, run) if queued and run.state == "active" else None
    if held is not None:
        waiting = Waiting(WaitCode.HELD, report.held_line(run, ctx.now()))
    budget = run.budget_nanos
    return {
        "run": run.id,
        "job": run.job,
        "state": run.state,
        "model": run.model,
        "output": run.output_uri,
        "items": report.status_items(counts, run.rejected_count),
        "batches": figures.batches,
        "cost_usd": nanos_to_usd(spent),
        "reserved_usd": nanos_to_usd(reserved),
        "estimated_usd": nanos_to_usd(run.estimated_nanos),
        "budget_usd": nanos_to_usd(budget) if budget is not None else None,
        "budget_left_usd": nanos_to_usd(budget - spent - reserved) if budget is not None else None,
        "waiting": None if waiting is None else waiting.text,
        "waiting_code": None if waiting is None else waiting.code.value,
        "held": held,
        "cached": figures.cached,
        "daily": _daily(ctx, figures.day_spend),
        "metrics": metrics_of(figures.metrics),
        "created_at": report.iso(run.created_at),
        "finished_at": report.iso(run.finished_at),
        "age_s": round((ctx.now() - as_utc(run.created_at)).total_seconds(), 1),
    }


def _daily(ctx: Context, day_spend: tuple[int, int] | None) -> dict[str, Any] | None:
    """Today's (UTC) spend across runs against NANOBATCH_DAILY_BUDGET_USD, when set."""
    cap = ctx.settings.daily_budget_usd
    if cap is None or day_spend is None:
        return None
    spent, reserved = day_spend
    cap_nanos = usd_to_nanos(cap)
    return {
        "cap_usd": float(cap),
        "spent_usd": nanos_to_usd(spent),
        "reserved_usd": nanos_to_usd(reserved),
        "left_usd": nanos_to_usd(cap_nanos - spent - reserved),
    }


# ── printing (the CLI's plan, status and report) ─────────────────────────────
def print_plan(plan: Plan, *, as_json: bool) -> None:
    for warning in plan.warnings:  # stderr in both forms: stdout stays the plan itself
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(plan.asdict(), indent=2))
        return
    d = plan.asdict()
    est = d["estimate"]
    assert isinstance(est, dict)
    click.echo(f"job {plan.job}  model {plan.model}")
    click.echo(f"items {plan.items}  rejected rows {plan.rejected}  batches {plan.batches}")
    if plan.references or plan.variants > 1:
        click.echo(
            f"  {plan.variants} variant(s) per row; {plan.references} reference image(s) sent, "
            "their input tokens included below"
        )
    for size, line in est["by_size"].items():
        click.echo(
            f"  {size:<40} {line['items']:>8} items  batch ${line['batch_usd']:.4f}"
            f"  standard ${line['standard_usd']:.4f}"
        )
    click.echo(
        f"estimate: ${est['batch_usd']:.4f} at batch price, "
        f"${est['standard_usd']:.4f} at standard price"
    )
    if plan.channel == "gemini":
        click.echo(
            f"quota: {est['tokens']:,} tokens over {plan.max_enqueued_tokens:,} enqueued "
            f"tokens = {plan.quota_windows} quota window(s)"
        )
    else:
        click.echo(
            f"quota: {est['tokens']:,} tokens; {plan.channel} batch has no enqueued-token "
            f"quota = {plan.quota_windows} quota window(s)"
        )
    for rej in plan.rejects:
        click.echo(f"  rejected row {rej.row} ({rej.key!r}): {printable(rej.reason)}")


def print_status(ctx: Context, run_ref: str | None, *, as_json: bool) -> None:
    runs = [ctx.ledger.get_run(run_ref)] if run_ref else ctx.ledger.list_runs()
    entries = [run_status(ctx, run) for run in runs]
    if as_json:
        click.echo(json.dumps({"runs": entries}, indent=2))
        return
    if not entries:
        click.echo("no runs yet; `nanobatch submit jobs/<job>.toml` records one")
    for e in entries:
        items = e["items"]
        click.echo(
            f"{e['run']}  {e['state']:<9} items: {items['succeeded']} ok, {items['failed']} "
            f"failed, {items['pending']} pending, {items['cancelled']} cancelled, "
            f"{items['rejected']} rejected  cost ${e['cost_usd']:.4f} "
            f"of est. ${e['estimated_usd']:.4f}"
        )
        if e["batches"]:
            click.echo(
                "    batches: " + ", ".join(f"{k} {v}" for k, v in sorted(e["batches"].items()))
            )
        if e["waiting"]:
            click.echo(f"    waiting: {e['waiting']}")


def write_report(ctx: Context, run_ref: str, fmt: str, out: Path | None) -> None:
    if fmt == "parquet" and out is None:
        raise UsageError("--format parquet needs --out FILE")
    if fmt == "html":
        from pipeline.shell.contact_sheet import write_contact_sheet

        if out is None:
            raise UsageError("--format html needs --out FILE")
        write_contact_sheet(ctx, run_ref, out)
        return
    if out is None or fmt == "parquet":
        render_report(ctx, run_ref, fmt, sys.stdout if out is None else None, out)
        return
    with out.open("w", encoding="utf-8", newline="") as stream:
        render_report(ctx, run_ref, fmt, stream, None)


def check_out_file(out: Path, example: str) -> None:
    """`--out` must name a file this user can create in a folder that exists; UsageError (one
    line, exit 2) otherwise, before any work is done. `example` is a file name to suggest."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file in it, e.g. {out / example}")
    folder = out.parent
    if not folder.exists():
        raise UsageError(
            f"--out {out}: the folder {folder} does not exist; create it or choose another path"
        )
    if not folder.is_dir():
        raise UsageError(f"--out {out}: {folder} is not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"--out {out}: this user cannot write there; choose another path")
