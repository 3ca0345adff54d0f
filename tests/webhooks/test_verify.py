"""Verifying a delivery (CONTRACT section 11): HMAC with any of several secrets, an RS256 JWT
against the JWKS by kid, 5 minutes of tolerance, the dedup key, and the event it names. Every
refusal says why, and none repeats a secret."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx2
import pytest
from keys import OTHER_SECRET, SECRET, KeyPair, body, hmac_headers, jwt_headers

from pipeline.adapters.delivery import JwksCache, Refused, Verifier, read_event

AUD = "https://hooks.example.test/gemini-webhook"


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return KeyPair()


def _verifier(pair: KeyPair, secrets: tuple[str, ...] = (SECRET,), **kw: Any) -> Verifier:
    fetched: list[str] = kw.pop("fetched", [])
    clock = kw.pop("monotonic", time.monotonic)

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return pair.jwks()

    jwks = JwksCache("http://emu.test/.well-known/jwks.json", fetch=fetch, clock=clock)
    return Verifier(secrets, jwks, audiences=lambda: {AUD}, **kw)


def _refusal(verifier: Verifier, raw: bytes, headers: dict[str, str]) -> Refused:
    with pytest.raises(Refused) as info:
        verifier.verify(raw, headers)
    return info.value


def test_hmac_with_any_of_the_secrets_is_accepted(pair: KeyPair) -> None:
    """Rotation: the delivery is signed with the second of two secrets."""
    raw = body("abc123")
    got = _verifier(pair, (OTHER_SECRET, SECRET)).verify(raw, hmac_headers(raw, msg_id="msg_9"))
    assert (got.key, got.scheme, got.event, got.batch) == (
        "id:msg_9",
        "hmac",
        "batch.succeeded",
        "batches/abc123",
    )


def test_forged_hmac_is_refused(pair: KeyPair) -> None:
    raw = body()
    refusal = _refusal(_verifier(pair), raw, hmac_headers(raw, secret=OTHER_SECRET))
    assert (refusal.status, refusal.reason) == (401, "bad_signature")


def test_tampered_body_is_refused(pair: KeyPair) -> None:
    headers = hmac_headers(body("abc123"))
    refusal = _refusal(_verifier(pair), body("zzz999"), headers)
    assert refusal.reason == "bad_signature"


def test_missing_signature_is_refused(pair: KeyPair) -> None:
    raw = body()
    headers = hmac_headers(raw)
    del headers["webhook-signature"]
    refusal = _refusal(_verifier(pair), raw, headers)
    assert (refusal.status, refusal.reason) == (401, "missing_signature")


def test_garbage_signature_is_refused(pair: KeyPair) -> None:
    raw = body()
    headers = hmac_headers(raw) | {"webhook-signature": "v1"}
    assert _refusal(_verifier(pair), raw, headers).reason == "bad_signature"
    headers["webhook-signature"] = "v1,not base64 at all!"
    assert _refusal(_verifier(pair), raw, headers).reason == "bad_signature"


def test_hmac_without_a_configured_secret_is_refused(pair: KeyPair) -> None:
    raw = body()
    refusal = _refusal(_verifier(pair, ()), raw, hmac_headers(raw))
    assert (refusal.status, refusal.reason) == (401, "no_secret")


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_timestamp_more_than_5_minutes_off_is_refused(pair: KeyPair, offset: int) -> None:
    raw = body()
    headers = hmac_headers(raw, at=time.time() + offset)
    refusal = _refusal(_verifier(pair), raw, headers)
    assert (refusal.status, refusal.reason) == (401, "stale")


def test_timestamp_within_5_minutes_is_accepted(pair: KeyPair) -> None:
    raw = body()
    assert _verifier(pair).verify(raw, hmac_headers(raw, at=time.time() - 280)).scheme == "hmac"


def test_jwt_of_the_jwks_is_accepted(pair: KeyPair) -> None:
    raw = body("batches/xyz", event="batch.failed")
    token = pair.token(aud=AUD, jti="j-1")
    got = _verifier(pair, ()).verify(raw, jwt_headers(token))
    assert (got.key, got.scheme, got.event, got.batch) == (
        "jti:j-1",
        "jwt",
        "batch.failed",
        "batches/xyz",
    )


def test_jwt_dedup_key_prefers_webhook_id_then_jti_then_body(pair: KeyPair) -> None:
    raw = body()
    verifier = _verifier(pair, ())
    with_id = verifier.verify(raw, jwt_headers(pair.token(), msg_id="msg_7", at=time.time()))
    assert with_id.key == "id:msg_7"
    bare = verifier.verify(raw, jwt_headers(pair.token(jti=None)))
    assert bare.key == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_jwt_from_another_key_is_refused(pair: KeyPair) -> None:
    """Same kid, different key: the signature does not verify."""
    impostor = KeyPair(kid=pair.kid)
    refusal = _refusal(_verifier(pair), body(), jwt_headers(impostor.token()))
    assert (refusal.status, refusal.reason) == (401, "bad_signature")


def test_jwt_with_an_unknown_kid_refetches_the_jwks_at_most_so_often(pair: KeyPair) -> None:
    """An unknown kid fetches the JWKS again (a rotated key), but at most once per 30 s, not on
    every forged delivery."""
    fetched: list[str] = []
    now = [1000.0]
    verifier = _verifier(pair, fetched=fetched, monotonic=lambda: now[0])
    verifier.verify(body(), jwt_headers(pair.token()))
    stranger = KeyPair(kid="nobody")
    for _ in range(3):
        assert _refusal(verifier, body(), jwt_headers(stranger.token())).reason == "bad_signature"
    assert len(fetched) == 1
    now[0] += JwksCache.MIN_REFETCH_S
    for _ in range(3):
        assert _refusal(verifier, body(), jwt_headers(stranger.token())).reason == "bad_signature"
    assert len(fetched) == 2


def test_jwt_hs256_is_refused(pair: KeyPair) -> None:
    """Only RS256: an HMAC-signed token (alg confusion) is refused."""
    refusal = _refusal(_verifier(pair), body(), jwt_headers(pair.token(alg="HS256")))
    assert refusal.reason == "bad_signature"


def test_jwt_expired_or_old_is_refused(pair: KeyPair) -> None:
    now = int(time.time())
    expired = pair.token(iat=now - 1000, exp=now - 400)
    assert _refusal(_verifier(pair), body(), jwt_headers(expired)).reason == "stale"
    old = pair.token(iat=now - 400, exp=None)
    assert _refusal(_verifier(pair), body(), jwt_headers(old)).reason == "stale"
    timeless = pair.token(iat=None, exp=None)
    assert _refusal(_verifier(pair), body(), jwt_headers(timeless)).reason == "stale"


def test_jwt_for_another_audience_is_refused(pair: KeyPair) -> None:
    token = pair.token(aud="https://someone-else.example.test/hook")
    assert _refusal(_verifier(pair), body(), jwt_headers(token)).reason == "bad_signature"


def test_refusals_never_carry_the_secret(pair: KeyPair) -> None:
    raw = body()
    refusals = [
        _refusal(_verifier(pair), raw, hmac_headers(raw, secret=OTHER_SECRET)),
        _refusal(_verifier(pair), raw, hmac_headers(raw, at=time.time() - 999)),
        _refusal(_verifier(pair), raw, hmac_headers(raw) | {"webhook-signature": "v1,@@"}),
    ]
    for refusal in refusals:
        text = f"{refusal} {refusal.detail} {refusal.reason}"
        assert SECRET not in text and SECRET.removeprefix("whsec_") not in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (body("abc"), ("batch.succeeded", "batches/abc")),
        (body("batches/abc", event="batch.completed"), ("batch.succeeded", "batches/abc")),
        (body("abc", event="video.generated"), ("video.generated", "batches/abc")),
        (b'{"type": "batch.failed"}', ("batch.failed", None)),
        (body("../../etc"), ("batch.succeeded", None)),
        (b"not json", ("", None)),
        (b"[1, 2]", ("", None)),
    ],
)
def test_read_event(raw: bytes, expected: tuple[str, str | None]) -> None:
    """The event type (batch.completed read as batch.succeeded) and the batch it names, with
    or without `batches/`; a body that is not an event names nothing."""
    assert read_event(raw) == expected


def test_unreachable_jwks_is_a_503_so_the_service_retries(pair: KeyPair) -> None:
    def fetch(url: str) -> dict[str, Any]:
        raise httpx2.ConnectError("connection refused")

    verifier = Verifier((), JwksCache("http://down.test/jwks", fetch=fetch), lambda: {AUD})
    refusal = _refusal(verifier, body(), jwt_headers(pair.token()))
    assert (refusal.status, refusal.reason) == (503, "jwks_unavailable")
