"""Run notifications: a JSON summary is POSTed once when a run finishes; a dead endpoint
neither fails the tick nor stops the run."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.ledger import repo
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator
from pipeline.shell.tick import tick
from tests.features.helpers import KEY, make_context, run_to_end, submit, write_job

ROWS = [{"key": "a", "prompt": "a lighthouse"}, {"key": "b", "prompt": "a harbour"}]


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server that records the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_notification_arrives_once(
    tmp_path: Path, emu: Emulator, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    """The finished run's summary (run, job, state, counts, cost) is POSTed exactly once."""
    url, received = receiver
    ctx = make_context(tmp_path, emu, notify_url=url)
    run_id = submit(ctx, write_job(tmp_path, "notified", ROWS))
    run_to_end(ctx, emu, run_id)
    tick(ctx, load_catalog())  # a later tick does not send it again
    assert len(received) == 1
    body = received[0]
    assert body["run"] == run_id and body["job"] == "notified" and body["state"] == "finished"
    assert body["items"]["succeeded"] == 2 and body["items"]["failed"] == 0
    assert body["cost_usd"] > 0
    with ctx.ledger.engine.connect() as conn:
        assert repo.runs_to_notify(conn) == []


def test_dead_url_does_not_stop_the_run(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an unreachable notify URL, `nanobatch tick` exits 0 and the run finishes."""
    from pipeline.cli import main

    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "deaf", ROWS))
    monkeypatch.setenv("NANOBATCH_DATABASE_URL", ctx.settings.database_url)
    monkeypatch.setenv("NANOBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("NANOBATCH_NOTIFY_URL", _dead_url())
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
    for _ in range(10):
        with pytest.raises(SystemExit) as done:
            main(["tick"])
        assert done.value.code == 0
        with ctx.ledger.engine.connect() as conn:
            run = repo.get_run(conn, run_id)
        if run.state != "active":
            break
        emu.clock.advance(10_000)
    assert run.state == "finished"
    with ctx.ledger.engine.connect() as conn:
        assert repo.item_counts(conn, run_id) == {"succeeded": 2}


def test_notify_logs_show_only_scheme_and_host(
    receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    """`run_notified` and `notify_failed` name the endpoint by scheme and host only: path
    tokens, query tokens and user info never reach a log line."""
    from structlog.testing import capture_logs

    from pipeline.shell.notify import send

    url, received = receiver
    origin = url.removesuffix("/hook")
    secret_url = url.replace("://", "://user:pw@") + "/T0K3N-path?token=s3cr3t"
    dead = _dead_url().replace("/hook", "/T0K3N-path?token=s3cr3t")
    with capture_logs() as logs:
        assert send(secret_url, {"event": "run_finished"}, run_id="r1")
        assert not send(dead, {"event": "run_finished"}, run_id="r2", sleep=lambda _: None)
    assert len(received) == 1
    (ok,) = [e for e in logs if e["event"] == "run_notified"]
    (failed,) = [e for e in logs if e["event"] == "notify_failed"]
    assert ok["url"] == origin
    assert failed["url"] == dead.split("/T0K3N")[0]
    for event in logs:
        text = json.dumps(event, default=str)
        assert "T0K3N" not in text and "s3cr3t" not in text and "pw@" not in text, text
