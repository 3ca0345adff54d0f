"""Signing helpers for the webhook tests: Standard Webhooks HMAC through the `standardwebhooks`
package, and RS256 JWTs through PyJWT with keys made here (so a test can also sign with a key
the JWKS does not hold)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from standardwebhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"nanobatch-test-secret-0123").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-secret-abcdefgh").decode()


def body(batch: str = "abc123", event: str = "batch.succeeded", **data: Any) -> bytes:
    payload = {"type": event, "version": "v1", "data": {"id": batch, **data}}
    return json.dumps(payload).encode()


def hmac_headers(
    raw: bytes, secret: str = SECRET, msg_id: str = "msg_1", at: float | None = None
) -> dict[str, str]:
    """Standard Webhooks headers signing `raw` with `secret` at time `at` (now by default)."""
    when = time.time() if at is None else at
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(when, UTC), raw.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when)),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


class KeyPair:
    """An RSA key with a kid: its JWKS and tokens it signs."""

    def __init__(self, kid: str = "test-kid") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [public | {"kid": self.kid, "alg": "RS256", "use": "sig"}]}

    def token(self, kid: str | None = None, alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        full = {"iat": now, "exp": now + 300, "jti": "jti-1"} | claims
        full = {k: v for k, v in full.items() if v is not None}
        key: Any = self.key if alg == "RS256" else "a-shared-secret-of-32-bytes-or-more!"
        return jwt.encode(full, key, algorithm=alg, headers={"kid": kid or self.kid})


def jwt_headers(token: str, msg_id: str | None = None, at: float | None = None) -> dict[str, str]:
    headers = {"webhook-signature": token, "content-type": "application/json"}
    if msg_id is not None:
        headers["webhook-id"] = msg_id
    if at is not None:
        headers["webhook-timestamp"] = str(int(at))
    return headers
