"""The `nanobatch` command's root: the click group with its global options, the Settings
and Context each command is handed, and `main`, where a PipelineError becomes its message
and exit code (one place). The commands live beside it: `jobs` (the work on runs) and
`service` (the webhook receiver, webhooks, the emulator, the database).
"""

from __future__ import annotations

import gc
import sys

import click

from pipeline import __version__
from pipeline.adapters import drill
from pipeline.adapters.config import LOG_FORMATS, Settings, load_settings
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.adapters.log import configure_logging, mask_text, register_secret
from pipeline.adapters.malloc import cap_arenas
from pipeline.core.errors import Interrupted, PipelineError
from pipeline.shell.context import Context


def settings_of(ctx: click.Context) -> Settings:
    return ctx.ensure_object(dict)["settings"]  # type: ignore[no-any-return]


def context_of(ctx: click.Context) -> Context:
    settings = settings_of(ctx)
    ledger = Ledger.open(settings.database_url)
    # The command's connections close with it: `main` also runs in-process (tests, `run`).
    ctx.call_on_close(ledger.dispose)
    return Context(settings=settings, ledger=ledger)


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


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; PipelineError becomes its message and exit code."""
    if argv is None:  # the process's own command line: before any thread starts
        cap_arenas()
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
