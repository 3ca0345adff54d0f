"""Wire-format helpers: ids, RFC 3339 timestamps, error envelopes, key lookup in either case."""

from __future__ import annotations

import functools
import re
import secrets
import string
from datetime import datetime
from typing import Any

ALNUM = string.ascii_lowercase + string.digits
API = "type.googleapis.com/google.ai.generativelanguage.v1main"

HTTP_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
UNAVAILABLE_MESSAGE = "The service is currently unavailable."


class ApiError(Exception):
    """An HTTP error answer: ``{"error": {"code", "message", "status"[, "details"]}}``."""

    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON error envelope."""
        err: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "status": HTTP_STATUS.get(self.code, "UNKNOWN"),
        }
        if self.details:
            err["details"] = self.details
        return {"error": err}


def new_id(length: int) -> str:
    """A random id of lowercase alphanumerics."""
    return "".join(secrets.choice(ALNUM) for _ in range(length))


def rfc3339(dt: datetime) -> str:
    """RFC 3339 UTC with 9 fractional digits, as the service writes it."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


def pick(d: Any, *names: str, default: Any = None) -> Any:
    """``d[name]`` for the first of ``names`` present, trying each in camelCase and snake_case."""
    if not isinstance(d, dict):
        return default
    for name in names:
        for variant in (name, snake(name)):
            if variant in d:
                return d[variant]
    return default


@functools.lru_cache(maxsize=1024)
def snake(name: str) -> str:
    """camelCase to snake_case (memoised: `pick` asks it for every field of every line)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def file_missing(file_id: str) -> ApiError:
    """The service's answer for a file that is missing, expired or not yours."""
    return ApiError(
        403,
        f"You do not have permission to access the File {file_id} or it may not exist.",
    )


def batch_missing(batch_id: str) -> ApiError:
    """The answer for an unknown batch."""
    return ApiError(404, f"Batch batches/{batch_id} not found.")
