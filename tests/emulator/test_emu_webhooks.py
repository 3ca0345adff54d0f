"""The emulator's webhooks (issue 18, CONTRACT section 11): the webhooks API through the real
google-genai SDK (create returns the secret once; list, get, delete), the JWKS, and signed
deliveries for batches that end: static (Standard Webhooks HMAC, checked here with the
`standardwebhooks` package) and dynamic (RS256 JWT, checked with PyJWT against the JWKS),
at least once with retries on non-2xx, and the webhook faults."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from emu_helpers import file_batch, request
from google import genai
from standardwebhooks import Webhook, WebhookVerificationError

from pipeline.emulator import Emulator, WebhookFaults

BATCH_EVENTS = ["batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"]


@dataclass
class Sink:
    """A local HTTP endpoint that records every POST and answers `statuses` in turn (then 200)."""

    statuses: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    url: str = ""

    def wait(self, n: int, timeout: float = 20.0) -> list[tuple[dict[str, str], bytes]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.got) >= n, timeout)
            return list(self.got)


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.cond:
                status = state.statuses.pop(0) if state.statuses else 200
                state.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                state.cond.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(image_scale=0.02, pending_seconds=30, running_seconds=60) as e:
        e.webhooks.retry_base_s = 0.05
        yield e


def _register(client: Any, url: str, events: list[str] | None = None) -> Any:
    return client.webhooks.create(uri=url, subscribed_events=events or BATCH_EVENTS, name="t")


def _batch(client: Any, tmp: Path, name: str = "job", **config: Any) -> Any:
    rows = [("a", request("a cat")), ("b", request("a dog"))]
    if not config:
        return file_batch(client, tmp, rows, name=name)
    f = client.files.upload(
        file=str(_jsonl(tmp / f"{name}.jsonl", rows)), config={"mime_type": "jsonl"}
    )
    return client.batches.create(
        model="gemini-3-pro-image-preview", src=f.name, config={"display_name": name, **config}
    )


def _jsonl(path: Path, rows: list[tuple[str, dict[str, Any]]]) -> Path:
    path.write_text("".join(json.dumps({"key": k, "request": r}) + "\n" for k, r in rows))
    return path


def test_webhooks_api_create_list_get_delete(client: Any) -> None:
    """Create returns a whsec_ secret once; list and get never show it; delete removes it."""
    made = _register(client, "https://example.test/hook")
    assert made.new_signing_secret.startswith("whsec_")
    assert made.state == "enabled"
    assert sorted(made.subscribed_events) == sorted(BATCH_EVENTS)
    listed = client.webhooks.list()
    assert [w.id for w in listed.webhooks] == [made.id]
    assert listed.webhooks[0].new_signing_secret is None
    got = client.webhooks.get(id=made.id)
    assert got.uri == "https://example.test/hook"
    assert got.new_signing_secret is None
    assert made.new_signing_secret not in json.dumps(got.model_dump(mode="json"))
    client.webhooks.delete(id=made.id)
    assert client.webhooks.list().webhooks in (None, [])


def test_webhooks_api_refuses_plain_http_and_unknown_events(emu: Emulator) -> None:
    """http is refused unless it is loopback; an event name the emulator is told to refuse is
    a 400 that names it."""
    client = genai.Client(api_key="k", http_options={"base_url": emu.url})
    with pytest.raises(Exception, match="https"):
        _register(client, "http://example.test/hook")
    emu.webhooks.refused_events = {"batch.cancelled"}
    with pytest.raises(Exception, match=r"batch\.cancelled"):
        _register(client, "https://example.test/hook")


def test_jwks_is_served_without_a_key(emu: Emulator) -> None:
    keys = httpx2.get(f"{emu.url}/.well-known/jwks.json").json()["keys"]
    assert [(k["kty"], k["alg"]) for k in keys] == [("RSA", "RS256")]
    assert keys[0]["kid"]


def test_static_delivery_is_hmac_signed(client: Any, emu: Emulator, sink: Sink, tmp_path: Path):
    """A batch that ends is pushed to the static webhook: Standard Webhooks headers, an HMAC
    that `standardwebhooks` accepts with the secret from create, a thin batch.succeeded body."""
    secret = _register(client, sink.url).new_signing_secret
    job = _batch(client, tmp_path)
    emu.clock.advance(10_000)
    headers, body = sink.wait(1)[0]
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "batch.succeeded"
    assert "batches/" + payload["data"]["id"].removeprefix("batches/") == job.name
    assert payload["data"]["output_file_uri"].startswith("files/")
    assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").verify(body, headers)


def test_dynamic_delivery_is_a_jwt_of_the_jwks(
    client: Any, emu: Emulator, sink: Sink, tmp_path: Path
) -> None:
    """A batch created with webhook_config is pushed to its URIs only, with an RS256 JWT whose
    key is in the JWKS, aud the URI and jti the webhook-id; user_metadata comes back."""
    static = Sink()
    _register(client, "https://static.example.test/hook")
    meta = {"run": "r-1", "batch": "nb-r-1-00001"}
    _batch(client, tmp_path, webhook_config={"uris": [sink.url], "user_metadata": meta})
    emu.clock.advance(10_000)
    headers, body = sink.wait(1)[0]
    token = headers["webhook-signature"]
    jwks = jwt.PyJWKSet.from_dict(httpx2.get(f"{emu.url}/.well-known/jwks.json").json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    claims = jwt.decode(token, key=key.key, algorithms=["RS256"], audience=sink.url)
    assert claims["jti"] == headers["webhook-id"]
    payload = json.loads(body)
    assert payload["type"] == "batch.succeeded"
    assert payload["data"]["user_metadata"] == meta
    assert static.got == []
    deliveries = [d for d in emu.webhooks.log if d["uri"] == "https://static.example.test/hook"]
    assert deliveries == []


def test_failed_and_cancelled_batches_send_their_events(
    client: Any, emu: Emulator, sink: Sink, tmp_path: Path
) -> None:
    from pipeline.emulator import BatchFault

    secret = _register(client, sink.url).new_signing_secret
    emu.faults.batch_faults = [BatchFault(state="FAILED", display_name_contains="bad")]
    _batch(client, tmp_path, name="bad-one")
    cancelled = _batch(client, tmp_path, name="stopped")
    client.batches.cancel(name=cancelled.name)
    emu.clock.advance(10_000)
    got = sink.wait(2)
    events = sorted(Webhook(secret).verify(b, h)["type"] for h, b in got)
    assert events == ["batch.cancelled", "batch.failed"]
    failed = next(json.loads(b) for _, b in got if b"batch.failed" in b)
    assert failed["data"]["error_code"] and failed["data"]["error_message"]


def test_non_2xx_is_retried_with_the_same_webhook_id(
    client: Any, emu: Emulator, sink: Sink, tmp_path: Path
) -> None:
    """At least once: 500 then 401 then 200 is three attempts of one message."""
    sink.statuses = [500, 401]
    _register(client, sink.url)
    _batch(client, tmp_path)
    emu.clock.advance(10_000)
    got = sink.wait(3)
    assert len({h["webhook-id"] for h, _ in got}) == 1
    time.sleep(0.3)
    assert len(sink.got) == 3


def test_fault_duplicates_and_bad_signature(
    client: Any, emu: Emulator, sink: Sink, tmp_path: Path
) -> None:
    """duplicates=1 sends every message twice; bad_signature=1 spoils the first attempt, which
    a receiver refuses, so it is sent again with a good signature."""
    emu.faults.webhooks = WebhookFaults(duplicates=1, bad_signature=1)
    secret = _register(client, sink.url).new_signing_secret
    sink.statuses = [401]
    _batch(client, tmp_path)
    emu.clock.advance(10_000)
    got = sink.wait(3)
    hook = Webhook(secret)
    valid = []
    for headers, body in got:
        try:
            valid.append(hook.verify(body, headers))
        except WebhookVerificationError:
            continue
    assert len(valid) >= 2
    assert len(got) - len(valid) == 1
    assert len({h["webhook-id"] for h, _ in got}) == 1


def test_fault_reorder_and_delay(client: Any, emu: Emulator, sink: Sink, tmp_path: Path) -> None:
    """reorder: messages held together go out newest first; delay_seconds holds the first
    attempt back at least that long."""
    emu.faults.webhooks = WebhookFaults(reorder=True, delay_seconds=0.3)
    _register(client, sink.url)
    first = _batch(client, tmp_path, name="first")
    emu.clock.advance(1)
    second = _batch(client, tmp_path, name="second")
    emu.clock.advance(10_000)
    got = sink.wait(2)
    ids = ["batches/" + json.loads(b)["data"]["id"].removeprefix("batches/") for _, b in got]
    assert ids == [second.name, first.name]
    for entry in emu.webhooks.log:
        assert entry["sent_after_s"] >= 0.3


def test_rotation_signs_with_old_and_new_secrets_and_ping_delivers(
    client: Any, emu: Emulator, sink: Sink, tmp_path: Path
) -> None:
    """After rotateSigningSecret the old secret signs on beside the new one (24 h grace), so
    a receiver holding either accepts; ping sends a webhook.ping message."""
    made = _register(client, sink.url)
    new = client.webhooks.rotate_signing_secret(id=made.id).secret
    assert new.startswith("whsec_") and new != made.new_signing_secret
    client.webhooks.ping(id=made.id)
    _batch(client, tmp_path)
    emu.clock.advance(10_000)
    got = sink.wait(2)
    events = [Webhook(new).verify(b, h)["type"] for h, b in got]
    assert sorted(events) == ["batch.succeeded", "webhook.ping"]
    for headers, raw in got:
        assert len(headers["webhook-signature"].split(" ")) == 2
        Webhook(made.new_signing_secret).verify(raw, headers)
