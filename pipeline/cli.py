"""The `nanobatch` command: thin click commands that parse, build Settings and a Context,
call one shell function and render. PipelineError becomes an exit code in one place
(`main`). Data goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from pipeline import __version__
from pipeline.adapters import drill
from pipeline.adapters.config import LOG_FORMATS, Settings, load_settings
from pipeline.adapters.ledger import db
from pipeline.adapters.log import configure_logging, get_logger, mask_text, register_secret
from pipeline.core.catalog import load_catalog
from pipeline.core.errors import Interrupted, PipelineError, UsageError
from pipeline.shell.context import Context

EMULATOR_KEY = "nanobatch-emulator-key"


def _settings(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


def _context(ctx: click.Context) -> Context:
    settings = _settings(ctx)
    engine = db.make_engine(settings.database_url)
    # The command's connections close with it: `main` also runs in-process (tests, `run`).
    ctx.call_on_close(engine.dispose)
    db.ensure_schema(engine)
    return Context(settings=settings, engine=engine)


class _GlobalOptionsGroup(click.Group):
    """The root group: its options that take a value (`--log-format`) may also come after
    the subcommand, anywhere before `--` (`nanobatch tick --log-format json`, as cron lines
    are written). They are moved in front of the subcommand before click parses."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_options(args, self._global_option_names()))

    def _global_option_names(self) -> frozenset[str]:
        return frozenset(
            name
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag and not param.is_eager
            for name in param.opts
        )


def hoist_options(args: list[str], names: frozenset[str]) -> list[str]:
    """`args` with every `NAME VALUE` / `NAME=VALUE` of `names` moved to the front, in order."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in names and i + 1 < len(args):
            front += args[i : i + 2]
            i += 2
            continue
        if arg.partition("=")[0] in names and "=" in arg:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


@click.group(cls=_GlobalOptionsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nanobatch")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Log lines on stderr: key=value on a terminal, JSON lines otherwise "
    "(env: NANOBATCH_LOG_FORMAT).",
)
@click.pass_context
def cli(ctx: click.Context, log_format: str | None) -> None:
    """Thousands of images through the Gemini Batch API at half price, with an exact
    account of every image.

    Global options may also follow the command: `nanobatch tick --log-format json`.

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
    for secret in settings.webhook_secrets:
        register_secret(secret)
        register_secret(secret.removeprefix("whsec_"))
    configure_logging(settings.log_format)
    drill.arm(settings.crash_at)
    ctx.ensure_object(dict)["settings"] = settings


@cli.command()
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("json_", "--json", is_flag=True, help="Print the plan as JSON.")
@click.pass_context
def plan(ctx: click.Context, spec: Path, json_: bool) -> None:
    """Validate, expand and shard SPEC; print counts, cost and quota windows.

    Touches no network and no ledger.
    """
    from pipeline.shell.planning import load_spec, make_plan, nothing_to_do
    from pipeline.shell.render import print_plan

    catalog = load_catalog()
    job = load_spec(spec, catalog, _settings(ctx).channel_defaults)
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

    run_id = submit_spec(_context(ctx), spec, force=force, use_cache=not no_cache)
    click.echo(run_id)


@cli.command()
@click.pass_context
def tick(ctx: click.Context) -> None:
    """One cron-safe step over every active run."""
    from pipeline.shell.tick import tick as do_tick

    result = do_tick(_context(ctx), load_catalog())
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
            _context(ctx),
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

    settings = _settings(ctx)
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
    from pipeline.shell.render import print_status

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
    from pipeline.shell.render import check_out_file, write_report

    if out is not None:
        check_out_file(out, f"report.{fmt}")
    write_report(_context(ctx), run_ref, fmt, out)


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
        _context(ctx),
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
    from pipeline.shell.render import check_out_file

    if out is not None:
        check_out_file(out, "nanobatch.prom")
    text = write_metrics(_context(ctx), out)
    if out is None:
        click.echo(text, nl=False)


@cli.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--include-final", is_flag=True, help="Also requeue items failed for good.")
@click.pass_context
def retry(ctx: click.Context, run_ref: str, include_final: bool) -> None:
    """Requeue failed items of RUN; the next tick sends them."""
    from pipeline.shell.commands import retry_run

    n = retry_run(_context(ctx), run_ref, include_final=include_final)
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

    change = set_budget(_context(ctx), run_ref, usd)
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

    cancel_and_settle(_context(ctx), run_ref, load_catalog())


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@click.option("--path", default="/gemini-webhook", show_default=True, help="The webhook path.")
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=2,
    show_default=True,
    help="Threads that move batches on after deliveries.",
)
@click.option(
    "--metrics-out",
    type=click.Path(path_type=Path),
    help="Write this process's delivery counters (Prometheus text) here every 15 s.",
)
@click.pass_context
def listen(
    ctx: click.Context, host: str, port: int, path: str, workers: int, metrics_out: Path | None
) -> None:
    """Receive Gemini API webhooks and harvest finished batches at once.

    Static webhooks are checked with NANOBATCH_WEBHOOK_SECRET (several secrets separated by
    spaces), dynamic ones against the service's JWKS. Keep `tick` in cron: it is the
    safety net. Stop with Ctrl-C or SIGTERM.
    """
    from pipeline.shell.listen import listen as serve

    if metrics_out is not None:
        from pipeline.shell.render import check_out_file

        check_out_file(metrics_out, "listen.prom")
    serve(
        _context(ctx),
        load_catalog(),
        host=host,
        port=port,
        path=path,
        workers=workers,
        metrics_out=metrics_out,
    )


@cli.group(name="webhooks")
def webhooks_group() -> None:
    """The project's static Gemini webhook for batch events."""


@webhooks_group.command("create")
@click.option("--url", required=True, help="Where the service sends events (https).")
@click.option("--name", default="nanobatch", show_default=True, help="A name for the webhook.")
@click.pass_context
def webhooks_create(ctx: click.Context, url: str, name: str) -> None:
    """Register a static webhook for batch.succeeded, .failed, .expired and .cancelled.

    Prints the signing secret alone on stdout (once: keep it in NANOBATCH_WEBHOOK_SECRET),
    and the webhook's id on stderr.
    """
    from pipeline.shell.webhooks import create

    made = create(_context(ctx), url, name)
    if made.left_out:
        click.echo(
            f"the service refused {', '.join(made.left_out)}; registered the other events",
            err=True,
        )
    click.echo(f"webhook {made.webhook.id}", err=True)
    click.echo(made.webhook.secret or "")


@webhooks_group.command("list")
@click.option("json_", "--json", is_flag=True, help="Print JSON.")
@click.pass_context
def webhooks_list(ctx: click.Context, json_: bool) -> None:
    """The project's webhooks: id, state, URL and events (never a secret)."""
    import json

    from pipeline.shell.webhooks import webhooks

    found = list(webhooks(_context(ctx)))
    if json_:
        rows = [
            {"id": w.id, "name": w.name, "state": w.state, "uri": w.uri, "events": list(w.events)}
            for w in found
        ]
        click.echo(json.dumps({"webhooks": rows}, indent=2))
        return
    for w in found:
        click.echo(f"{w.id}\t{w.state}\t{w.uri}\t{','.join(w.events)}")


@webhooks_group.command("delete")
@click.argument("webhook_id", metavar="ID")
@click.pass_context
def webhooks_delete(ctx: click.Context, webhook_id: str) -> None:
    """Delete the webhook ID (deliveries stop)."""
    from pipeline.shell.webhooks import delete

    delete(_context(ctx), webhook_id)
    click.echo(f"deleted webhook {webhook_id}", err=True)


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
    ctx.call_on_close(engine.dispose)  # its connections close with the command
    db.upgrade(engine)
    click.echo(f"{db.mask_url(settings.database_url)} at {db.current_revision(engine)}", err=True)


def _add_emulator_serve() -> None:
    from pipeline.emulator.cli import serve_command

    emulator.add_command(serve_command, "serve")


_add_emulator_serve()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; PipelineError becomes its message and exit code."""
    try:
        _run(argv)
    finally:
        if argv is None:  # the process's own command line: it exits now
            # The interpreter's teardown collects every object still alive, among them the
            # hundreds of thousands of google.genai's types: 0.4-0.7 s of every command's
            # exit (a tenth of a 1 GB harvest). Frozen objects are left to the process's
            # end. Not for a caller in the same process (tests): it would keep them alive.
            gc.freeze()


def _run(argv: list[str] | None) -> None:
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
    except Interrupted as exc:  # Ctrl-C: not an error, the message says how to resume
        click.echo(mask_text(str(exc)), err=True)
        sys.exit(exc.exit_code)
    except PipelineError as exc:
        click.echo(f"error: {mask_text(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)
