"""Wire-format helpers: ids, RFC 3339 timestamps, error envelopes, key lookup in either case."""

from __future__ import annotations

import functools
import math
import re
import secrets
import string
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.emulator.schema import Violation

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


def bad_request(violations: list[Violation]) -> ApiError:
    """The 400 for a body that does not parse: every violation in the message (one per line)
    and in google.rpc.BadRequest details (no ``field`` for the top level), as the service
    answers."""
    field_violations = [
        {"field": v.field, "description": v.description}
        if v.field
        else {"description": v.description}
        for v in violations
    ]
    details = [{"@type": f"{RPC}.BadRequest", "fieldViolations": field_violations}]
    return ApiError(400, "\n".join(v.description for v in violations), details)


def model_missing(model: str, version: str, method: str) -> ApiError:
    """The service's 404 for a model it does not serve (with the version segment asked)."""
    return ApiError(
        404,
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


RPC = "type.googleapis.com/google.rpc"
# The quotas a 429 names in its QuotaFailure. Only the enqueued-token one is documented (the
# rate-limits page's "Batch Enqueued Tokens"); the metric and id names follow the service's
# pattern (generativelanguage.googleapis.com/<metric>, <What>Per<Scope>) and are the emulator's.
QUOTAS = {
    "enqueued_tokens": ("batch_enqueued_tokens", "BatchEnqueuedTokensPerModelPerProject"),
    "concurrent_batches": ("batch_concurrent_jobs", "BatchConcurrentJobsPerProject"),
    "storage": ("file_storage_bytes", "FileStorageBytesPerProject"),
    "requests": ("generate_content_requests", "GenerateRequestsPerMinutePerProjectPerModel"),
}
RATE_LIMITS = "https://ai.google.dev/gemini-api/docs/rate-limits"


def quota_details(
    quota: str, model_value: tuple[str, int] | None, delay: str
) -> list[dict[str, Any]]:
    """A 429's details as the service sends them: QuotaFailure, Help, RetryInfo."""
    metric, quota_id = QUOTAS[quota]
    violation: dict[str, Any] = {
        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
        "quotaId": quota_id,
    }
    if model_value is not None:
        model, value = model_value
        violation["quotaDimensions"] = {"location": "global", "model": model}
        violation["quotaValue"] = str(value)
    help_link = {"description": "Learn more about Gemini API quotas", "url": RATE_LIMITS}
    return [
        {"@type": f"{RPC}.QuotaFailure", "violations": [violation]},
        {"@type": f"{RPC}.Help", "links": [help_link]},
        {"@type": f"{RPC}.RetryInfo", "retryDelay": delay},
    ]


def retry_delay(seconds: float) -> str:
    """RetryInfo.retryDelay (a Duration in JSON: whole seconds, "22s"), at least 1 s."""
    return f"{max(1, math.ceil(seconds))}s"


def injected(status: int, message: str | None) -> ApiError:
    """An error a fault plan injects; a 429 carries RetryInfo and QuotaFailure like the
    service's (a per-minute request quota: retry after 30 s)."""
    if status == 429:
        return ApiError(429, message or QUOTA_MESSAGE, quota_details("requests", None, "30s"))
    if status >= 500:
        return ApiError(status, message or UNAVAILABLE_MESSAGE)
    return ApiError(status, message or "Request contains an invalid argument.")
