"""`listen` refuses what the contract refuses, with a 4xx and nothing recorded (CONTRACT
section 11): forged or missing signatures, a JWT from another key, a replay, a stale
timestamp, a body over 2^20 bytes, other methods and paths. What it accepts it records once;
unknown events and batches are acknowledged and ignored; the secret never shows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from faults_helpers import Drill
from keys import OTHER_SECRET, SECRET, KeyPair, body, hmac_headers, jwt_headers
from live import Live, ledger_text, live_listen

from pipeline.shell.metrics import listen_text


@pytest.fixture
def world(drill: Drill) -> Iterator[tuple[Drill, Live, str]]:
    """A run with one live batch in the emulator, and a listen whose workers are idle (the
    mover is never reached for refusals)."""
    drill.write_spec(2, per_batch=2)
    drill.submit()
    remote = drill.query("SELECT remote_name FROM batches")[0][0]
    with live_listen(drill, (SECRET,)) as live:
        yield drill, live, remote


def _post(live: Live, raw: bytes, headers: dict[str, str], **kw: Any) -> httpx2.Response:
    return httpx2.post(live.url, content=raw, headers=headers, timeout=10, **kw)


def _deliveries(drill: Drill) -> list[Any]:
    return drill.query("SELECT key, state, event, batch_name, detail FROM deliveries")


def _api_calls_after(drill: Drill, mark: int) -> list[str]:
    return [e["kind"] for e in drill.emu.request_log[mark:] if "method" in e]


def test_forged_signature_is_refused_and_nothing_recorded(world: tuple[Drill, Live, str]) -> None:
    drill, live, remote = world
    mark = len(drill.emu.request_log)
    raw = body(remote)
    response = _post(live, raw, hmac_headers(raw, secret=OTHER_SECRET))
    assert response.status_code == 401
    assert response.json() == {"error": "bad_signature"}
    assert _deliveries(drill) == []
    assert _api_calls_after(drill, mark) == []


def test_missing_signature_is_refused(world: tuple[Drill, Live, str]) -> None:
    drill, live, remote = world
    raw = body(remote)
    headers = hmac_headers(raw)
    del headers["webhook-signature"]
    assert _post(live, raw, headers).status_code == 401
    assert _post(live, raw, {"content-type": "application/json"}).status_code == 401
    assert _deliveries(drill) == []


def test_jwt_from_another_key_is_refused(world: tuple[Drill, Live, str]) -> None:
    """A token signed by a key the emulator's JWKS does not hold (same kid as the real one)."""
    drill, live, remote = world
    kid = httpx2.get(f"{drill.emu.url}/.well-known/jwks.json").json()["keys"][0]["kid"]
    token = KeyPair(kid=kid).token()
    response = _post(live, body(remote), jwt_headers(token, msg_id="msg_x", at=time.time()))
    assert (response.status_code, response.json()) == (401, {"error": "bad_signature"})
    assert _deliveries(drill) == []


def test_stale_timestamp_is_refused(world: tuple[Drill, Live, str]) -> None:
    drill, live, remote = world
    raw = body(remote)
    response = _post(live, raw, hmac_headers(raw, at=time.time() - 301))
    assert (response.status_code, response.json()) == (401, {"error": "stale"})
    assert _deliveries(drill) == []


def test_replay_is_acknowledged_once_and_a_late_replay_refused(
    world: tuple[Drill, Live, str],
) -> None:
    """The same delivery again is acknowledged and does nothing; the same bytes replayed
    after 5 minutes are refused as stale."""
    drill, live, remote = world
    raw = body(remote)
    headers = hmac_headers(raw, msg_id="msg_replay")
    first = _post(live, raw, headers)
    again = _post(live, raw, headers)
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert [d.key for d in _deliveries(drill)] == ["id:msg_replay"]
    late = hmac_headers(raw, msg_id="msg_replay", at=time.time() - 600)
    assert _post(live, raw, late).status_code == 401


@pytest.mark.parametrize("size", [(1 << 20) + 1, 3 << 20])
def test_body_over_a_mebibyte_is_refused(world: tuple[Drill, Live, str], size: int) -> None:
    """Over 2^20 bytes: 413, with a Content-Length and chunked alike; nothing recorded."""
    drill, live, remote = world
    payload = {"type": "batch.succeeded", "data": {"id": remote}, "pad": ""}
    raw = json.dumps(payload).encode()
    raw = raw.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(raw)) + b'"')
    assert len(raw) == size
    headers = hmac_headers(raw)
    assert _post(live, raw, headers).status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(raw), 65536):
            yield raw[start : start + 65536]

    assert _post(live, chunks(), headers).status_code == 413  # type: ignore[arg-type]
    assert _deliveries(drill) == []


def test_body_of_exactly_a_mebibyte_is_accepted(world: tuple[Drill, Live, str]) -> None:
    _, live, remote = world
    raw = json.dumps({"type": "batch.succeeded", "data": {"id": remote}, "pad": ""}).encode()
    raw = raw.replace(b'"pad": ""', b'"pad": "' + b"x" * ((1 << 20) - len(raw)) + b'"')
    assert len(raw) == 1 << 20
    assert _post(live, raw, hmac_headers(raw)).status_code == 202


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_other_methods_are_refused(world: tuple[Drill, Live, str], method: str) -> None:
    drill, live, remote = world
    raw = body(remote)
    response = httpx2.request(method, live.url, content=raw, headers=hmac_headers(raw))
    assert response.status_code == 405
    assert _deliveries(drill) == []


@pytest.mark.parametrize("path", ["/", "/other", "/gemini-webhook/", "/gemini-webhook/x"])
def test_other_paths_are_refused(world: tuple[Drill, Live, str], path: str) -> None:
    drill, live, remote = world
    raw = body(remote)
    response = httpx2.post(live.base + path, content=raw, headers=hmac_headers(raw))
    assert response.status_code == 404
    assert _deliveries(drill) == []


def test_unknown_event_and_unknown_batch_are_acknowledged_and_ignored(
    world: tuple[Drill, Live, str],
) -> None:
    drill, live, remote = world
    mark = len(drill.emu.request_log)
    video = body(remote, event="video.generated")
    stranger = body("someone-elses-batch")
    assert _post(live, video, hmac_headers(video, msg_id="m1")).json() == {"status": "ignored"}
    assert _post(live, stranger, hmac_headers(stranger, msg_id="m2")).status_code == 200
    rows = {d.key: (d.state, d.detail) for d in _deliveries(drill)}
    assert rows == {
        "id:m1": ("ignored", "not a batch event"),
        "id:m2": ("ignored", "not a batch of this ledger"),
    }
    assert _api_calls_after(drill, mark) == []


def test_refusals_are_counted_by_reason(world: tuple[Drill, Live, str]) -> None:
    _, live, remote = world
    raw = body(remote)
    _post(live, raw, hmac_headers(raw, secret=OTHER_SECRET))
    _post(live, raw, hmac_headers(raw, at=time.time() - 999))
    httpx2.get(live.url)
    httpx2.post(live.base + "/nope", content=raw)
    text = listen_text(dict(live.receiver.counters), live.receiver.queue_depth)
    for reason in ("bad_signature", "stale", "method", "path"):
        assert f'nanobatch_listen_refused_total{{reason="{reason}"}} 1' in text
    assert 'nanobatch_listen_refused_total{reason="too_large"} 0' in text


def test_secret_never_in_answers_or_ledger(world: tuple[Drill, Live, str]) -> None:
    """Good, forged, stale and malformed deliveries: no answer and no ledger row holds the
    secret or its key."""
    drill, live, remote = world
    raw = body(remote)
    answers = [
        _post(live, raw, hmac_headers(raw)),
        _post(live, raw, hmac_headers(raw, secret=OTHER_SECRET)),
        _post(live, raw, hmac_headers(raw, at=time.time() - 999)),
        _post(live, raw, hmac_headers(raw) | {"webhook-signature": "v1,%%%"}),
        _post(live, b"\xff\xfe", hmac_headers(b"x")),
    ]
    texts = [a.text + json.dumps(dict(a.headers)) for a in answers] + [ledger_text(drill.db_url)]
    for text in texts:
        assert SECRET not in text
        assert SECRET.removeprefix("whsec_") not in text
