"""The commands around the work: `listen` (the webhook receiver), `webhooks` (the static
webhook), `emulator serve` and `db upgrade`.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.adapters.ledger import db
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.cli.app import cli, context_of, settings_of
from pipeline.core.catalog import load_catalog


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
        from pipeline.shell.reporting import check_out_file

        check_out_file(metrics_out, "listen.prom")
    serve(
        context_of(ctx),
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

    made = create(context_of(ctx), url, name)
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

    found = list(webhooks(context_of(ctx)))
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

    delete(context_of(ctx), webhook_id)
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
    settings = settings_of(ctx)
    ledger = Ledger.open(settings.database_url, migrate=False)
    ctx.call_on_close(ledger.dispose)  # its connections close with the command
    revision = ledger.upgrade()
    click.echo(f"{db.mask_url(settings.database_url)} at {revision}", err=True)


def _add_emulator_serve() -> None:
    from pipeline.emulator.cli import serve_command

    emulator.add_command(serve_command, "serve")


_add_emulator_serve()
