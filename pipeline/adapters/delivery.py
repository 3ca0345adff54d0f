"""Verifying a webhook delivery (CONTRACT section 11, reference/webhooks.md section 5): a
static delivery's Standard Webhooks HMAC with any of the configured secrets (through the
`standardwebhooks` package), or a dynamic delivery's RS256 JWT against the service's JWKS,
looked up by `kid` in a cache (through PyJWT). Then the key it is deduplicated by and the
event and batch its body names.

Every refusal is a `Refused` with an HTTP status and a reason code for the metrics; its text
never holds a secret, a token or the body. The body is a hint: nothing here trusts it beyond
naming a batch to ask the service about.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
from standardwebhooks import Webhook

TOLERANCE_S = 300
"""A timestamp (webhook-timestamp, a JWT's iat or exp) more than 5 minutes off is refused."""
BATCH_EVENTS = frozenset({"batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"})
ALIASES = {"batch.completed": "batch.succeeded"}
_BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")
REASONS = (
    "method",
    "path",
    "too_large",
    "bad_headers",
    "missing_signature",
    "bad_signature",
    "no_secret",
    "stale",
    "jwks_unavailable",
)
"""Why a delivery is refused (the `reason` label of the refusal counter)."""


class Refused(Exception):
    """A delivery refused: `status` is the HTTP answer, `reason` one of REASONS."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail


@dataclass(frozen=True)
class Verified:
    key: str
    """What the delivery is recorded once by: id:<webhook-id>, jti:<jti> or sha256:<body>."""
    scheme: str
    """hmac (static webhook) or jwt (dynamic)."""
    event: str
    """The event type ("" when the body names none); batch.completed reads batch.succeeded."""
    batch: str | None
    """The batch it names, as `batches/<id>`, or None."""


class JwksCache:
    """The service's signing keys by kid. Fetched on first use, again after an hour, and when
    a kid is unknown, but at most once per MIN_REFETCH_S, so forged kids cannot make every
    delivery fetch the JWKS."""

    MAX_AGE_S = 3600.0
    MIN_REFETCH_S = 30.0

    def __init__(
        self,
        url: str,
        fetch: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._fetch = fetch or _fetch_json
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def get(self, kid: str) -> Any:
        """The PyJWK for `kid`, or None when the JWKS does not have it."""
        with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < self.MAX_AGE_S
            if kid in self._keys and fresh:
                return self._keys[kid]
            recent = self._fetched_at is not None and now - self._fetched_at < self.MIN_REFETCH_S
            if not recent:
                self._refresh(now)
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        try:
            data = self._fetch(self.url)
        except (httpx2.HTTPError, ValueError) as exc:
            if not self._keys:
                raise Refused(503, "jwks_unavailable", f"cannot read {self.url}: {exc}") from None
            return  # keep the keys we have; try again after MIN_REFETCH_S
        finally:
            self._fetched_at = now
        try:
            keys = jwt.PyJWKSet.from_dict(data).keys
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, TypeError, KeyError):
            keys = []
        self._keys = {k.key_id: k for k in keys if k.key_id}


def _fetch_json(url: str) -> Any:
    response = httpx2.get(url, timeout=5.0)
    response.raise_for_status()
    return response.json()


class Verifier:
    """Checks deliveries against the static secrets and the JWKS."""

    def __init__(
        self,
        secrets: Sequence[str],
        jwks: JwksCache,
        audiences: Callable[[], Collection[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hooks = [Webhook(s) for s in secrets]
        self._jwks = jwks
        self._audiences = audiences
        self._clock = clock

    def verify(self, body: bytes, headers: Mapping[str, str]) -> Verified:
        """The verified delivery; Refused when it must not be accepted."""
        h = {k.lower(): v for k, v in headers.items()}
        signature = (h.get("webhook-signature") or "").strip()
        if not signature:
            raise Refused(401, "missing_signature", "no webhook-signature header")
        self._check_time(h.get("webhook-timestamp"), "webhook-timestamp")
        event, batch = read_event(body)
        if _looks_like_jwt(signature):
            key = self._verify_jwt(signature, h, body)
            return Verified(key, "jwt", event, batch)
        self._verify_hmac(body, h)
        return Verified(f"id:{h['webhook-id']}", "hmac", event, batch)

    def _check_time(self, value: str | None, name: str) -> None:
        if value is None:
            return
        try:
            at = float(value)
        except ValueError:
            raise Refused(400, "bad_headers", f"{name} is not a Unix time") from None
        if abs(self._clock() - at) > TOLERANCE_S:
            raise Refused(401, "stale", f"{name} is more than {TOLERANCE_S} s off")

    def _verify_hmac(self, body: bytes, h: dict[str, str]) -> None:
        if not h.get("webhook-id") or not h.get("webhook-timestamp"):
            raise Refused(400, "bad_headers", "webhook-id and webhook-timestamp are required")
        if not self._hooks:
            raise Refused(
                401, "no_secret", "an HMAC delivery, and NANOBATCH_WEBHOOK_SECRET is unset"
            )
        for hook in self._hooks:
            # Not only WebhookVerificationError: a malformed header raises ValueError and the
            # like inside the library (reference/webhooks.md 5.1), a non-UTF-8 body too.
            try:
                hook.verify(body, h, json_parse=False)
                return
            except Exception:
                continue
        raise Refused(401, "bad_signature", "no configured secret made this signature")

    def _verify_jwt(self, token: str, h: dict[str, str], body: bytes) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Refused(401, "bad_signature", "the signature is not a readable JWT") from None
        key = self._jwks.get(str(header.get("kid") or ""))
        if key is None or header.get("alg") != "RS256":
            raise Refused(401, "bad_signature", "the JWT's key is not in the JWKS, or not RS256")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=["RS256"],
                leeway=TOLERANCE_S,
                options={"verify_aud": False},
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise Refused(401, "stale", "the JWT is expired or not yet valid") from None
        except jwt.InvalidTokenError as exc:
            raise Refused(
                401, "bad_signature", f"the JWT does not verify ({type(exc).__name__})"
            ) from None
        self._check_claims(claims, h)
        if h.get("webhook-id"):
            return f"id:{h['webhook-id']}"
        if claims.get("jti"):
            return f"jti:{claims['jti']}"
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def _check_claims(self, claims: dict[str, Any], h: dict[str, str]) -> None:
        if "iat" not in claims and "exp" not in claims and "webhook-timestamp" not in h:
            raise Refused(401, "stale", "the JWT carries no iat or exp")
        if "iat" in claims:
            self._check_time(str(claims["iat"]), "the JWT's iat")
        if "aud" in claims:
            wanted = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
            if not set(map(str, wanted)) & set(self._audiences()):
                raise Refused(401, "bad_signature", "the JWT's aud is not a webhook URL of ours")


def _looks_like_jwt(signature: str) -> bool:
    """Three dot-separated segments and no comma: a JWT; `v1,<sig>` entries are HMAC."""
    return "," not in signature and signature.count(".") == 2 and " " not in signature


def read_event(body: bytes) -> tuple[str, str | None]:
    """(event type, `batches/<id>` or None) named by a delivery's body; ("", None) when the
    body is not a JSON object. An id that is not a plain batch id names no batch."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "", None
    if not isinstance(payload, dict):
        return "", None
    event = str(payload.get("type") or "")[:100]
    event = ALIASES.get(event, event)
    data = payload.get("data")
    raw_id = data.get("id") if isinstance(data, dict) else None
    if not isinstance(raw_id, str):
        return event, None
    bare = raw_id.removeprefix("batches/")
    return event, f"batches/{bare}" if _BATCH_ID.fullmatch(bare) else None
