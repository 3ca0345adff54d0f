"""The click command ``serve`` for the main CLI (``nanobatch emulator serve``)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.emulator import QUICK_TIMING, REALISTIC_TIMING, serve, timing


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True, help="0 picks a free port")
@click.option("--api-key", default=None, help="Refuse any other key (400 API_KEY_INVALID).")
@click.option("--speed", type=float, default=1.0, show_default=True, help="Clock acceleration.")
@click.option(
    "--faults", type=click.Path(exists=True, path_type=Path), default=None, help="Fault plan."
)
@click.option("--image-scale", type=float, default=1.0, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--realistic",
    is_flag=True,
    help=(
        f"Service-like timing: PENDING {REALISTIC_TIMING[0]:g} s, then RUNNING "
        f"{REALISTIC_TIMING[1]:g} s (minutes, as the real service often takes)."
    ),
)
@click.option(
    "--pending-seconds",
    type=float,
    default=None,
    help=f"Seconds a batch stays PENDING [default: {QUICK_TIMING[0]:g}, "
    f"{REALISTIC_TIMING[0]:g} with --realistic].",
)
@click.option(
    "--running-seconds",
    type=float,
    default=None,
    help=f"Seconds a batch stays RUNNING [default: {QUICK_TIMING[1]:g}, "
    f"{REALISTIC_TIMING[1]:g} with --realistic].",
)
@click.option("--enqueued-token-quota", type=int, default=2_000_000, show_default=True)
@click.option("--max-live-batches", type=int, default=100, show_default=True)
def serve_command(
    host: str,
    port: int,
    api_key: str | None,
    speed: float,
    faults: Path | None,
    image_scale: float,
    data_dir: Path | None,
    realistic: bool,
    pending_seconds: float | None,
    running_seconds: float | None,
    enqueued_token_quota: int,
    max_live_batches: int,
) -> None:
    """Run the Gemini Batch API emulator until interrupted.

    With no flags a small batch finishes in seconds (PENDING 2 s, RUNNING 3 s, on the
    emulator clock); --realistic gives service-like minutes; --speed runs the clock faster.
    """
    pending, running = timing(realistic, pending_seconds, running_seconds)
    serve(
        host=host,
        port=port,
        api_key=api_key,
        speed=speed,
        faults=faults,
        image_scale=image_scale,
        data_dir=data_dir,
        pending_seconds=pending,
        running_seconds=running,
        enqueued_token_quota=enqueued_token_quota,
        max_live_batches=max_live_batches,
    )
