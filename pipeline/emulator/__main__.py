"""``python -m pipeline.emulator``: run the emulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.emulator import QUICK_TIMING, REALISTIC_TIMING, serve, timing


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (the same as ``nanobatch emulator serve``)."""
    p = argparse.ArgumentParser(prog="python -m pipeline.emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--api-key", default=None, help="refuse any other key (400 API_KEY_INVALID)")
    p.add_argument("--speed", type=float, default=1.0, help="clock acceleration factor")
    p.add_argument("--faults", type=Path, default=None, help="fault plan (.json or .toml)")
    p.add_argument("--image-scale", type=float, default=1.0, help="scale of image pixel sizes")
    p.add_argument("--data-dir", type=Path, default=None, help="where files live (temp dir)")
    p.add_argument(
        "--realistic",
        action="store_true",
        help="service-like minutes: PENDING {:g} s, RUNNING {:g} s".format(*REALISTIC_TIMING),
    )
    p.add_argument(
        "--pending-seconds",
        type=float,
        default=None,
        help=f"seconds PENDING (default {QUICK_TIMING[0]:g}; a small batch finishes in seconds)",
    )
    p.add_argument(
        "--running-seconds",
        type=float,
        default=None,
        help=f"seconds RUNNING (default {QUICK_TIMING[1]:g})",
    )
    p.add_argument("--enqueued-token-quota", type=int, default=2_000_000, help="per model")
    p.add_argument("--max-live-batches", type=int, default=100)
    return p


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and serve."""
    a = build_parser().parse_args(argv)
    pending, running = timing(a.realistic, a.pending_seconds, a.running_seconds)
    serve(
        host=a.host,
        port=a.port,
        api_key=a.api_key,
        speed=a.speed,
        faults=a.faults,
        image_scale=a.image_scale,
        data_dir=a.data_dir,
        pending_seconds=pending,
        running_seconds=running,
        enqueued_token_quota=a.enqueued_token_quota,
        max_live_batches=a.max_live_batches,
    )


if __name__ == "__main__":
    main()
