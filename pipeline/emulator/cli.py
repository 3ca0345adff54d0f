"""The click command ``serve`` for the main CLI (``nanobatch emulator serve``)."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.emulator import serve


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
@click.option("--pending-seconds", type=float, default=60.0, show_default=True)
@click.option("--running-seconds", type=float, default=120.0, show_default=True)
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
    pending_seconds: float,
    running_seconds: float,
    enqueued_token_quota: int,
    max_live_batches: int,
) -> None:
    """Run the Gemini Batch API emulator until interrupted."""
    serve(
        host=host,
        port=port,
        api_key=api_key,
        speed=speed,
        faults=faults,
        image_scale=image_scale,
        data_dir=data_dir,
        pending_seconds=pending_seconds,
        running_seconds=running_seconds,
        enqueued_token_quota=enqueued_token_quota,
        max_live_batches=max_live_batches,
    )
