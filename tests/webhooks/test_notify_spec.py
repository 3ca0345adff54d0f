"""`[notify] webhook_url` in a spec (CONTRACT section 11): https only (http to loopback for
the emulator), sent as each created batch's webhookConfig with the run id and the batch's
display name in user_metadata, and not part of the run's identity."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from faults_helpers import Drill
from live import wait_for

from pipeline.core.catalog import load_catalog
from pipeline.core.errors import SpecError
from pipeline.core.spec_parse import parse_spec
from pipeline.shell.intake import run_identity

BASE = """name = "n"
model = "gemini-3-pro-image-preview"
[input]
path = "p.csv"
id_column = "k"
prompt_column = "p"
[output]
uri = "out"
"""


def _spec(extra: str = "") -> Any:
    return parse_spec(BASE + extra, Path("/jobs/n.toml"), load_catalog())


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/gemini-webhook",
        "http://127.0.0.1:8787/gemini-webhook",
        "http://localhost:9/x",
        "http://[::1]:8787/h",
    ],
)
def test_webhook_url_accepted(url: str) -> None:
    assert _spec(f'[notify]\nwebhook_url = "{url}"\n').notify.webhook_url == url


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/h", "ftp://x/y", "https://", "hooks.example.com", "https://a b/"],
)
def test_webhook_url_refused_names_the_key(url: str) -> None:
    with pytest.raises(SpecError, match=r"notify\.webhook_url.*https"):
        _spec(f'[notify]\nwebhook_url = "{url}"\n')


def test_unknown_notify_key_is_refused() -> None:
    with pytest.raises(SpecError, match=r"notify\.url: unknown key"):
        _spec('[notify]\nurl = "https://x.test/h"\n')


def test_webhook_url_is_not_part_of_the_run_identity() -> None:
    """The same spec with or without [notify] is the same run (a run recorded before the key
    existed is found again)."""
    plain, notified = _spec(), _spec('[notify]\nwebhook_url = "https://x.test/h"\n')
    assert run_identity(plain, "sha", "out", "2026-11-30", "") == run_identity(
        notified, "sha", "out", "2026-11-30", ""
    )


@pytest.fixture
def sink() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append(({k.lower(): v for k, v in self.headers.items()}, raw))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()
    server.server_close()


def test_batches_carry_the_webhook_with_run_and_batch_metadata(
    drill: Drill, sink: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    url, got = sink
    spec = drill.write_spec(4, per_batch=2)
    spec.write_text(spec.read_text() + f'[notify]\nwebhook_url = "{url}"\n')
    run = drill.submit()
    assert wait_for(lambda: len(got) >= 2, timeout=30)
    names = {r[0] for r in drill.query("SELECT display_name FROM batches")}
    metadata = [json.loads(raw)["data"]["user_metadata"] for _, raw in got]
    assert sorted(m["batch"] for m in metadata) == sorted(names)
    assert {m["run"] for m in metadata} == {run}
    assert all(h["webhook-signature"].count(".") == 2 for h, _ in got)
    assert drill.query("SELECT webhook_url FROM runs")[0][0] == url
