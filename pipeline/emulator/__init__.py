"""The Gemini Batch API emulator: a stdlib HTTP server the real google-genai SDK cannot tell
from the service (Files resumable upload/download, batches create/get/list/cancel/delete),
and Vertex AI batch prediction jobs over a GCS emulator (`vertex`).

Public API: ``Emulator`` (start/stop in-process, on port 0 by default), ``serve`` (blocking, for
``python -m pipeline.emulator`` and ``nanobatch emulator serve``), ``FaultPlan`` and ``Clock``.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pipeline.emulator.clock import Clock
from pipeline.emulator.faults import (
    BatchFault,
    DownloadFault,
    FaultPlan,
    HttpFault,
    LineFault,
    WebhookFaults,
)
from pipeline.emulator.server import EmulatorServer
from pipeline.emulator.state import Config, State
from pipeline.emulator.vertex import VertexJobs
from pipeline.emulator.webhooks import WebhookBatches, Webhooks

__all__ = [
    "QUICK_TIMING",
    "REALISTIC_TIMING",
    "BatchFault",
    "Clock",
    "DownloadFault",
    "Emulator",
    "FaultPlan",
    "HttpFault",
    "LineFault",
    "WebhookFaults",
    "serve",
    "timing",
]

# (pending, running) seconds of `serve` on the emulator clock. Quick: a person trying it sees a
# small batch finish in seconds. Realistic: a file batch in the Batch API cookbook sat PENDING
# about 5 minutes before it ran (https://github.com/google-gemini/cookbook Batch_mode.ipynb).
QUICK_TIMING = (2.0, 3.0)
REALISTIC_TIMING = (300.0, 600.0)


def timing(
    realistic: bool, pending_seconds: float | None, running_seconds: float | None
) -> tuple[float, float]:
    """(pending, running) seconds for `serve`: the quick or realistic defaults, unless given."""
    pending, running = REALISTIC_TIMING if realistic else QUICK_TIMING
    return (
        pending if pending_seconds is None else pending_seconds,
        running if running_seconds is None else running_seconds,
    )


class Emulator:
    """An in-process emulator. ``with Emulator(...) as emu:`` starts it and cleans up."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        speed: float = 1.0,
        faults: FaultPlan | None = None,
        image_scale: float = 1.0,
        data_dir: Path | None = None,
        enqueued_token_quota: int | dict[str, int] = 2_000_000,
        max_live_batches: int = 100,
        pending_seconds: float = 60.0,
        running_seconds: float = 120.0,
        max_file_bytes: int = 2 * 1024**3,
        max_storage_bytes: int = 20 * 1024**3,
        storage_host: str | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        root = (
            Path(tempfile.mkdtemp(prefix="nanobatch-emulator-")) if data_dir is None else data_dir
        )
        self.data_dir = Path(root)
        self.clock = Clock(speed)
        self.faults = faults or FaultPlan()
        config = Config(
            data_dir=self.data_dir,
            api_key=api_key,
            image_scale=image_scale,
            enqueued_token_quota=enqueued_token_quota,
            max_live_batches=max_live_batches,
            pending_seconds=pending_seconds,
            running_seconds=running_seconds,
            max_file_bytes=max_file_bytes,
            max_storage_bytes=max_storage_bytes,
        )
        self._state = State(config, self.clock, lambda: self.faults)
        self._batches = WebhookBatches(self._state)
        self.webhooks: Webhooks = self._batches.webhooks
        """The webhooks API, JWKS and deliveries (knobs: retry_base_s, refused_events; log)."""
        # Vertex AI jobs read and write Cloud Storage through a GCS emulator:
        # `storage_host`, else STORAGE_EMULATOR_HOST when a job is created.
        self._vertex = VertexJobs(self._state, storage_host)
        self._address = (host, port)
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """Every request served, and one ``{"kind": "line", ...}`` entry per request line."""
        return self._state.request_log

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (only once started)."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Emulator:
        """Bind and serve in a background daemon thread."""
        if self._server is None:
            self._server = EmulatorServer(
                self._address, self._state, self._batches, self._vertex, self.webhooks
            )
            self.webhooks.start()
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="nanobatch-emulator", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve on the calling thread until ``stop`` (from another thread)."""
        if self._server is None:
            self._server = EmulatorServer(
                self._address, self._state, self._batches, self._vertex, self.webhooks
            )
            self.webhooks.start()
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and remove the data directory if the emulator made it."""
        server, self._server = self._server, None
        self.webhooks.stop()
        if server is not None:
            if self._thread is not None:
                server.shutdown()
                self._thread.join(timeout=5)
            server.server_close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def batches(self) -> list[dict[str, Any]]:
        """Internal view for tests: name, displayName, state, model and request keys."""
        return [
            {
                "name": f"batches/{b.id}",
                "displayName": b.display_name,
                "state": b.state,
                "model": b.model,
                "keys": list(b.keys),
            }
            for b in self._batches.listing()
        ]

    def vertex_jobs(self) -> list[dict[str, Any]]:
        """Internal view for tests: each Vertex job's name, displayName, state, model,
        output folder and input files."""
        return [
            {
                "name": j.name,
                "displayName": j.display_name,
                "state": j.state,
                "model": j.model,
                "outputDir": j.output_dir,
                "inputs": list(j.inputs),
            }
            for j in sorted(self._vertex.jobs.values(), key=lambda j: int(j.id))
        ]

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    speed: float = 1.0,
    faults: FaultPlan | str | Path | None = None,
    image_scale: float = 1.0,
    data_dir: Path | None = None,
    pending_seconds: float = QUICK_TIMING[0],
    running_seconds: float = QUICK_TIMING[1],
    **options: Any,
) -> None:
    """Serve until SIGINT or SIGTERM; print one line "emulator listening on URL" first.

    ``options`` are passed on to ``Emulator`` (enqueued_token_quota, max_live_batches, ...).
    """
    plan = FaultPlan.from_file(faults) if isinstance(faults, str | Path) else faults
    emu = Emulator(
        host=host,
        port=port,
        api_key=api_key,
        speed=speed,
        faults=plan,
        image_scale=image_scale,
        data_dir=data_dir,
        pending_seconds=pending_seconds,
        running_seconds=running_seconds,
        **options,
    ).start()
    try:
        print(f"emulator listening on {emu.url}", flush=True)
        _wait_for_signal()
    finally:
        emu.stop()
        sys.stdout.flush()


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM, then restore the previous handlers."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
