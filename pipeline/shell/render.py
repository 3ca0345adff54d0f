"""Printing plans, statuses and reports to stdout as text or JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from pipeline.adapters.ledger import repo
from pipeline.core.errors import UsageError
from pipeline.core.report import printable
from pipeline.shell.context import Context
from pipeline.shell.planning import Plan
from pipeline.shell.reporting import render_report, run_status


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
    with ctx.engine.connect() as conn:
        runs = [repo.get_run(conn, run_ref)] if run_ref else repo.list_runs(conn)
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
