"""The `nanobatch` command: thin click commands that parse, build Settings and a Context,
call one shell function and render. PipelineError becomes an exit code in one place
(`main`). Data goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from pipeline import __version__, drill
from pipeline.catalog import load_catalog
from pipeline.config import Settings, load_settings
from pipeline.context import Context
from pipeline.errors import PipelineError
from pipeline.ledger import db
from pipeline.log import configure_logging, mask_text, register_secret

EMULATOR_KEY = "nanobatch-emulator-key"


def _settings(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


def _context(ctx: click.Context) -> Context:
    settings = _settings(ctx)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    return Context(settings=settings, engine=engine)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nanobatch")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default=None,
    help="Log lines on stderr: key=value on a terminal, JSON lines otherwise "
    "(env: NANOBATCH_LOG_FORMAT).",
)
@click.pass_context
def cli(ctx: click.Context, log_format: str | None) -> None:
    """Thousands of images through the Gemini Batch API at half price, with an exact
    account of every image.

    \b
    Example:
      nanobatch run jobs/example.toml --emulator     # no API key needed
      nanobatch status
      nanobatch report example --format json
    """
    settings = load_settings()
    if log_format:
        settings = settings.with_overrides(log_format=log_format)
    register_secret(settings.api_key)
    configure_logging(settings.log_format)
    drill.arm(settings.crash_at)
    ctx.ensure_object(dict)["settings"] = settings


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("json_", "--json", is_flag=True, help="Print the plan as JSON.")
def plan(spec: Path, json_: bool) -> None:
    """Validate, expand and shard SPEC; print counts, cost and quota windows.

    Touches no network and no ledger.
    """
    from pipeline.planning import load_spec, make_plan
    from pipeline.render import print_plan

    catalog = load_catalog()
    result = make_plan(load_spec(spec, catalog), catalog)
    print_plan(result, as_json=json_)


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
    from pipeline.shell import submit_spec

    run_id = submit_spec(_context(ctx), spec, force=force, use_cache=not no_cache)
    click.echo(run_id)


@cli.command()
@click.pass_context
def tick(ctx: click.Context) -> None:
    """One cron-safe step over every active run."""
    from pipeline.tick import tick as do_tick

    result = do_tick(_context(ctx), load_catalog())
    finished = ", ".join(result.finished_runs) or "-"
    held = ", ".join(f"{run} ({why})" for run, why in result.held_runs.items()) or "-"
    click.echo(
        f"harvested {result.harvested}, polled {result.polled}, formed {result.formed}, "
        f"created {result.created} batches; finished runs: {finished}; held runs: {held}",
        err=True,
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

    Exit 0 when every item that was sent succeeded, 3 when some failed for good.
    """
    from pipeline.shell import run_spec

    with _maybe_emulator(ctx, emulator):
        code = run_spec(
            _context(ctx),
            spec,
            poll_interval=poll_interval,
            force=force,
            use_cache=not no_cache,
            as_json=json_,
        )
    sys.exit(code)


@contextlib.contextmanager
def _maybe_emulator(ctx: click.Context, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    from pipeline.emulator import Emulator

    with Emulator(pending_seconds=1.0, running_seconds=2.0) as emu:
        obj = ctx.ensure_object(dict)
        obj["settings"] = _settings(ctx).with_overrides(
            base_url=emu.url, api_key=EMULATOR_KEY, api_key_variable="GEMINI_API_KEY"
        )
        click.echo(f"emulator listening on {emu.url}", err=True)
        yield


@cli.command()
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("json_", "--json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, run_ref: str | None, json_: bool) -> None:
    """Runs, or one run: items and batches by state, cost, and why work is waiting."""
    from pipeline.render import print_status

    print_status(_context(ctx), run_ref, as_json=json_)


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
    from pipeline.render import write_report

    write_report(_context(ctx), run_ref, fmt, out)


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write atomically to this file (node_exporter textfile collector) instead of stdout.",
)
@click.pass_context
def metrics(ctx: click.Context, out: Path | None) -> None:
    """Ledger metrics in the Prometheus text format: items, batches, cost, errors, latency."""
    from pipeline.metrics import write_metrics

    text = write_metrics(_context(ctx), out)
    if out is None:
        click.echo(text, nl=False)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--include-final", is_flag=True, help="Also requeue items failed for good.")
@click.pass_context
def retry(ctx: click.Context, run_ref: str, include_final: bool) -> None:
    """Requeue failed items of RUN; the next tick sends them."""
    from pipeline.shell import retry_run

    n = retry_run(_context(ctx), run_ref, include_final=include_final)
    click.echo(f"requeued {n} items", err=True)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.pass_context
def cancel(ctx: click.Context, run_ref: str) -> None:
    """Cancel RUN's live batches and harvest what they finished."""
    from pipeline.shell import cancel_and_settle

    cancel_and_settle(_context(ctx), run_ref, load_catalog())


@cli.group()
def emulator() -> None:
    """The built-in Gemini Batch API emulator."""


@cli.group(name="db")
def db_group() -> None:
    """The ledger database."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply migrations to NANOBATCH_DATABASE_URL."""
    settings = _settings(ctx)
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    click.echo(f"{db.mask_url(settings.database_url)} at {db.current_revision(engine)}", err=True)


def _add_emulator_serve() -> None:
    from pipeline.emulator.cli import serve_command

    emulator.add_command(serve_command, "serve")


_add_emulator_serve()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; PipelineError becomes its message and exit code."""
    try:
        cli.main(args=argv, prog_name="nanobatch", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except PipelineError as exc:
        click.echo(f"error: {mask_text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)
