"""Pushing webhook messages: signing (Standard Webhooks HMAC-SHA256 for static webhooks, an
RS256 JWT for dynamic ones, both written here from the specs with the standard library and
`cryptography`, not with the libraries nanobatch verifies with) and sending them at least
once: a non-2xx answer or a network error is retried with exponential backoff until 24 hours
(emulator clock) after the event.

Messages to one URI go one at a time, in the order they come due, so a fault that reorders
them is what a receiver sees.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

RETRY_FOR = timedelta(hours=24)
SEND_TIMEOUT_S = 5.0
JWT_LIFETIME_S = 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_secret() -> str:
    """A Standard Webhooks signing secret: whsec_ + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def hmac_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}` under the secret's key."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class Signer:
    """The RSA key dynamic deliveries are signed with, and its JWKS."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._current: tuple[rsa.RSAPrivateKey, str] | None = None

    def rotate(self) -> None:
        """A new key (and kid): the JWKS then serves only the new one."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self._lock:
            self._current = key, "emu-" + secrets.token_hex(6)

    def _key(self) -> tuple[rsa.RSAPrivateKey, str]:
        """The key and its kid, made on first use (an emulator without webhooks never pays)."""
        if self._current is None:
            self.rotate()
        assert self._current is not None
        return self._current

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            key, kid = self._key()
            numbers = key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(n)}
        return {"keys": [jwk | {"e": b64url(e)}]}

    def token(self, claims: dict[str, Any], spoil: bool = False) -> str:
        """An RS256 JWT of `claims`; `spoil` signs it with a throwaway key under the same kid."""
        with self._lock:
            key, kid = self._key()
        if spoil:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        header = {"alg": "RS256", "kid": kid, "typ": "JWT"}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


@dataclass
class Message:
    """One message to one URI; `copies` of it may be in flight (the duplicate fault)."""

    id: str
    uri: str
    body: bytes
    event: str
    batch: str | None
    deadline: datetime
    secrets: Callable[[], list[str]] | None = None
    """Static: the webhook's secrets at send time. None for a dynamic (JWT) message."""
    born: float = field(default_factory=time.monotonic)


@dataclass
class Attempt:
    message: Message
    due: float
    tries: int = 0
    seq: int = 0


class Sender:
    """Sender threads over a list of attempts ordered by due time; one attempt per URI at a
    time. `log` gets one entry per attempt."""

    def __init__(
        self,
        signer: Signer,
        now: Callable[[], datetime],
        spoil: Callable[[], bool],
        threads: int = 4,
    ) -> None:
        self.signer, self.now, self.spoil = signer, now, spoil
        self.retry_base_s = 1.0
        self.retry_max_s = 60.0
        self.log: list[dict[str, Any]] = []
        self._threads = threads
        self._cond = threading.Condition()
        self._todo: list[Attempt] = []
        self._busy: set[str] = set()
        self._seq = 0
        self._stop = False
        self._workers: list[threading.Thread] = []

    def start(self) -> None:
        self._stop = False
        for i in range(self._threads):
            worker = threading.Thread(target=self._work, name=f"emu-push-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=SEND_TIMEOUT_S + 1)
        self._workers = []

    def add(self, message: Message, delay_s: float = 0.0) -> None:
        self._queue(Attempt(message, time.monotonic() + delay_s))

    def _queue(self, attempt: Attempt) -> None:
        with self._cond:
            self._seq += 1
            attempt.seq = self._seq
            self._todo.append(attempt)
            self._todo.sort(key=lambda a: (a.due, a.seq))
            self._cond.notify_all()

    def _next(self) -> Attempt | None:
        """The first due attempt whose URI is free, waiting for one; None when stopping."""
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                wait = 1.0
                for i, attempt in enumerate(self._todo):
                    if attempt.message.uri in self._busy:
                        continue
                    if attempt.due <= now:
                        self._busy.add(attempt.message.uri)
                        return self._todo.pop(i)
                    wait = min(wait, attempt.due - now)
                    break
                self._cond.wait(max(wait, 0.005))
        return None

    def _work(self) -> None:
        while (attempt := self._next()) is not None:
            try:
                ok = self._send(attempt)
            finally:
                with self._cond:
                    self._busy.discard(attempt.message.uri)
                    self._cond.notify_all()
            if not ok and self.now() < attempt.message.deadline:
                delay = min(self.retry_base_s * 2**attempt.tries, self.retry_max_s)
                attempt.tries += 1
                attempt.due = time.monotonic() + delay
                self._queue(attempt)

    def _send(self, attempt: Attempt) -> bool:
        message = attempt.message
        spoiled = self.spoil()
        headers = self._headers(message, int(time.time()), spoiled)
        status: int | str
        try:
            status = _post(message.uri, message.body, headers)
        except (OSError, http.client.HTTPException) as exc:
            status = f"error: {type(exc).__name__}"
        self.log.append(
            {
                "id": message.id,
                "uri": message.uri,
                "event": message.event,
                "batch": message.batch,
                "scheme": "hmac" if message.secrets else "jwt",
                "attempt": attempt.tries + 1,
                "status": status,
                "spoiled": spoiled,
                "sent_after_s": round(time.monotonic() - message.born, 4),
            }
        )
        return isinstance(status, int) and 200 <= status < 300

    def _headers(self, message: Message, timestamp: int, spoil: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "nanobatch-emulator-webhooks",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
        }
        if message.secrets is not None:
            keys = [new_secret()] if spoil else message.secrets()
            signatures = [hmac_signature(s, message.id, timestamp, message.body) for s in keys]
            headers["webhook-signature"] = " ".join(signatures)
        else:
            claims = {
                "aud": message.uri,
                "iat": timestamp,
                "exp": timestamp + JWT_LIFETIME_S,
                "jti": message.id,
                "sub": message.batch or "",
            }
            headers["webhook-signature"] = self.signer.token(claims, spoil)
        return headers


def _post(uri: str, body: bytes, headers: dict[str, str]) -> int:
    """POST without following redirects (a 3xx is a failed delivery); the status code."""
    url = urlsplit(uri)
    conn_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(url.netloc, timeout=SEND_TIMEOUT_S)
    try:
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return int(response.status)
    finally:
        conn.close()
