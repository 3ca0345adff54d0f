"""The commands on jobs and runs: plan, submit, tick, run, status, report, export, metrics,
retry, budget and cancel. Each parses, builds its Context, calls one shell function and
renders; data goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from pipeline.adapters.config import Settings
from pipeline.adapters.log import get_logger
from pipeline.cli.app import cli, context_of, settings_of
from pipeline.core.catalog import load_catalog
from pipeline.core.errors import PipelineError, UsageError

EMULATOR_KEY = "nanobatch-emulator-key"


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("json_", "--json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(ctx: click.Context, spec: Path, json_: bool) -> None:
    """Validate, expand and shard SPEC; print counts, cost and quota windows.

    Touches no network and no ledger.
    """
    from pipeline.shell.planning import load_spec, make_plan, nothing_to_do
    from pipeline.shell.reporting import print_plan

    catalog = load_catalog()
    job = load_spec(spec, catalog, settings_of(ctx).channel_defaults)
    result = make_plan(job, catalog)
    print_plan(result, as_json=json_)
    if result.items == 0:
        raise nothing_to_do(job, result.rejected)


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Record a new run even if this one exists.")
@click.option("--no-cache", is_flag=True, help="Send every item, even if an earlier run made it.")
@click.pass_context
def submit(ctx: click.Context, spec: Path, force: bool, no_cache: bool) -> None:
    """Record a run of SPEC and submit its batches; print the run id.

    The same spec with the same input and output is the same run: submitting it again
    prints the existing run id and spends nothing, unless --force.
    """
    from pipeline.shell.commands import submit_spec

    run_id = submit_spec(context_of(ctx), spec, force=force, use_cache=not no_cache)
    click.echo(run_id)


@cli.command()
@click.pass_context
def tick(ctx: click.Context) -> None:
    """One cron-safe step over every active run."""
    from pipeline.shell.tick import tick as do_tick

    result = do_tick(context_of(ctx), load_catalog())
    # A log line, not plain text: cron appends stderr to a JSON log (--log-format json).
    get_logger().info(
        "tick_done",
        harvested=result.harvested,
        polled=result.polled,
        formed=result.formed,
        created=result.created,
        finished_runs=result.finished_runs,
        held_runs=result.held_runs,
    )


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option(
    "--poll-interval", type=float, default=30.0, show_default=True, help="Seconds between ticks."
)
@click.option("--emulator", is_flag=True, help="Start the built-in emulator in-process and use it.")
@click.option("--force", is_flag=True, help="Record a new run even if this one exists.")
@click.option("--no-cache", is_flag=True, help="Send every item, even if an earlier run made it.")
@click.option("json_", "--json", is_flag=True, help="End with the report as JSON.")
@click.pass_context
def run(
    ctx: click.Context,
    spec: Path,
    poll_interval: float,
    emulator: bool,
    force: bool,
    no_cache: bool,
    json_: bool,
) -> None:
    """Submit SPEC, then tick until the run is finished, then print its report.

    Resumes the latest active run of SPEC (one interrupted, even if started with --force)
    instead of recording a new one. Exit 0 when every item that was sent succeeded, 3 when
    some failed for good, 130 on Ctrl-C (the run goes on with `run SPEC` or `tick`).
    """
    from pipeline.shell.commands import run_spec

    with _maybe_emulator(ctx, emulator, spec):
        code = run_spec(
            context_of(ctx),
            spec,
            poll_interval=poll_interval,
            force=force,
            use_cache=not no_cache,
            as_json=json_,
        )
    sys.exit(code)


@contextlib.contextmanager
def _maybe_emulator(ctx: click.Context, enabled: bool, spec: Path) -> Iterator[None]:
    if not enabled:
        yield
        return
    from pipeline.emulator import Emulator

    settings = settings_of(ctx)
    if _is_vertex(spec, settings) and not settings.storage_emulator_host:
        raise UsageError(
            f"{spec}: a Vertex AI spec under --emulator reads and writes Cloud Storage through "
            "a GCS emulator: start one (e.g. fake-gcs-server), create the staging bucket in it "
            "and set STORAGE_EMULATOR_HOST (README: the Vertex AI channel)"
        )
    with Emulator(
        pending_seconds=1.0, running_seconds=2.0, storage_host=settings.storage_emulator_host
    ) as emu:
        obj = ctx.ensure_object(dict)
        obj["settings"] = settings.with_overrides(
            base_url=emu.url,
            api_key=EMULATOR_KEY,
            api_key_variable="GEMINI_API_KEY",
            api_key_unused=None,
            # Vertex runs go to the same emulator, with a placeholder token: real
            # credentials are never refreshed for, or sent to, it.
            vertex_base_url=emu.url,
            vertex_placeholder_token=True,
        )
        click.echo(f"emulator listening on {emu.url}", err=True)
        yield


def _is_vertex(spec: Path, settings: Settings) -> bool:
    """Whether SPEC says `[channel] kind = "vertex"` (a bad spec is reported by `run` itself)."""
    from pipeline.shell.planning import load_spec

    try:
        return load_spec(spec, load_catalog(), settings.channel_defaults).channel.is_vertex
    except PipelineError:
        return False


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("json_", "--json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, run_ref: str | None, json_: bool) -> None:
    """Runs, or one run: items and batches by state, cost, and why work is waiting."""
    from pipeline.shell.reporting import print_status

    print_status(context_of(ctx), run_ref, as_json=json_)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "fmt",
    "--format",
    type=click.Choice(["table", "json", "jsonl", "csv", "parquet", "html"]),
    default="table",
    show_default=True,
)
@click.option(
    "--out", type=click.Path(path_type=Path), help="Write to this file instead of stdout."
)
@click.pass_context
def report(ctx: click.Context, run_ref: str, fmt: str, out: Path | None) -> None:
    """The per-image account of RUN (a run id, or a job name for its latest run)."""
    from pipeline.shell.reporting import check_out_file, write_report

    if out is not None:
        check_out_file(out, f"report.{fmt}")
    write_report(context_of(ctx), run_ref, fmt, out)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("fmt", "--format", type=click.Choice(["imagefolder", "webdataset"]), required=True)
@click.option(
    "--out", required=True, metavar="PATH", help="A folder (made if needed) or gs://bucket/prefix."
)
@click.option(
    "--shard-max-bytes",
    type=click.IntRange(min=1),
    default=1_000_000_000,
    show_default=True,
    help="webdataset: most bytes per tar shard.",
)
@click.option(
    "--shard-max-samples",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="webdataset: most samples (image + json) per tar shard.",
)
@click.pass_context
def export(
    ctx: click.Context,
    run_ref: str,
    fmt: str,
    out: str,
    shard_max_bytes: int,
    shard_max_samples: int,
) -> None:
    """RUN's succeeded images as a dataset: a Hugging Face imagefolder (images plus
    metadata.jsonl) or WebDataset tar shards. Running it again gives the same files."""
    from pipeline.shell.export import export_run

    result = export_run(
        context_of(ctx),
        run_ref,
        fmt,
        out,
        max_bytes=shard_max_bytes,
        max_samples=shard_max_samples,
    )
    click.echo(result.summary(), err=True)


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write atomically to this file (node_exporter textfile collector) instead of stdout.",
)
@click.pass_context
def metrics(ctx: click.Context, out: Path | None) -> None:
    """Ledger metrics in the Prometheus text format: items, batches, cost, errors, latency."""
    from pipeline.shell.metrics import write_metrics
    from pipeline.shell.reporting import check_out_file

    if out is not None:
        check_out_file(out, "nanobatch.prom")
    text = write_metrics(context_of(ctx), out)
    if out is None:
        click.echo(text, nl=False)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--include-final", is_flag=True, help="Also requeue items failed for good.")
@click.pass_context
def retry(ctx: click.Context, run_ref: str, include_final: bool) -> None:
    """Requeue failed items of RUN; the next tick sends them."""
    from pipeline.shell.commands import retry_run

    n = retry_run(context_of(ctx), run_ref, include_final=include_final)
    click.echo(f"requeued {n} items", err=True)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--usd", required=True, metavar="X", help="The run's new budget cap in US dollars (above 0)."
)
@click.pass_context
def budget(ctx: click.Context, run_ref: str, usd: str) -> None:
    """Set RUN's budget cap (its spec's [limits] budget_usd at first) without a new run.

    Work the old cap held back goes on at the next tick (or `run SPEC` again).
    """
    from pipeline.core.values import nanos_to_usd
    from pipeline.shell.commands import set_budget

    change = set_budget(context_of(ctx), run_ref, usd)
    old = "none" if change.old_nanos is None else f"${nanos_to_usd(change.old_nanos):.4f}"
    click.echo(
        f"run {change.run_id}: budget {old} -> ${nanos_to_usd(change.new_nanos):.4f} "
        f"(spent ${nanos_to_usd(change.spent_nanos):.4f}, "
        f"reserved ${nanos_to_usd(change.reserved_nanos):.4f})",
        err=True,
    )


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.pass_context
def cancel(ctx: click.Context, run_ref: str) -> None:
    """Cancel RUN's live batches and harvest what they finished."""
    from pipeline.shell.commands import cancel_and_settle

    cancel_and_settle(context_of(ctx), run_ref, load_catalog())
