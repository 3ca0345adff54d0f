"""Results lines: classify one parsed line of a batch results file (CONTRACT.md section 6).

Pure. A line is `{"key", "response"}` or `{"key", "error"}`; a Vertex AI prediction line
is `{"key", "status", "processed_time", "request", "response"}`, where a non-empty
`status` is the line's error (see `classify_status`). Outcomes:
- succeeded: the response holds an image (the LAST non-thought inlineData part whose
  mimeType starts with image/), whatever the finishReason;
- final: a per-line error with a non-retryable code (gRPC 3, 5, 7, 9, ..., HTTP 4xx but 429),
  a prompt blocked by promptFeedback.blockReason, or a safety finishReason with no image
  (safety=True for the last two: fallback_model is not tried for them);
- retry: a retryable per-line error (gRPC 2, 4, 8, 10, 13, 14; HTTP 429, 500, 503, 504), an
  error with no code, a response with no image and no safety block, a malformed line.
Each outcome but success carries a `ReasonCode` (core.reasons) beside its reason text.
Usage comes from usageMetadata: output_image = IMAGE entries of candidatesTokensDetails,
output_text = candidatesTokenCount minus those (never negative), thinking = thoughtsTokenCount.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import pybase64

from pipeline.core.reasons import NO_FALLBACK, ReasonCode, rpc_code
from pipeline.core.values import Usage

Kind = Literal["succeeded", "retry", "final"]

GRPC_CODES: Final = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
RETRYABLE_GRPC: Final = frozenset({2, 4, 8, 10, 13, 14})
RETRYABLE_HTTP: Final = frozenset({429, 500, 503, 504})
HTTP_STATUS: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
SAFETY_FINISH_REASONS: Final = frozenset(
    {
        "IMAGE_SAFETY",
        "SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
    }
)
_URLSAFE: Final = str.maketrans("-_", "+/")
FINAL_STATUS_NAMES: Final = (
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
)
"""The 400-class gRPC names: a Vertex line whose status names one fails for good."""
_STATUS_NAME: Final = re.compile(r"\b(" + "|".join(GRPC_CODES.values()) + r")\b")
_STATUS_HTTP: Final = re.compile(
    r"(?:\b(?:code|error|status)\b\W{0,3}|\bHTTP(?:/[\d.]+)?\s+|^)([1-5]\d\d)\b", re.IGNORECASE
)
_FINAL_HTTP_PHRASES: Final = re.compile(
    r"\b(bad request|unauthorized|forbidden|not found)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class LineOutcome:
    key: str | None
    kind: Kind
    reason: str | None
    """None on success; e.g. "grpc 13 INTERNAL: ...", "safety: IMAGE_SAFETY"."""
    code: ReasonCode | None
    """None on success; what programs use instead of the reason's text."""
    image_b64: str | None
    """Base64 text of the last non-thought image part."""
    mime: str | None
    usage: Usage | None
    status: int | None = None
    """The gRPC/HTTP code of a per-line error (GRPC_* / HTTP_* codes)."""

    @property
    def safety(self) -> bool:
        """True for safety blocks (fallback_model is not tried for these)."""
        return self.code in NO_FALLBACK


def _code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class LineError:
    """A line's error: its outcome, the reason text, its code and rpc status number."""

    kind: Literal["retry", "final"]
    reason: str
    code: ReasonCode
    status: int | None = None


def classify_error(status: Mapping[str, Any]) -> tuple[Literal["retry", "final"], str]:
    """A google.rpc.Status (gRPC code, or an HTTP code should a line carry one) to an outcome
    and a reason such as "grpc 13 INTERNAL: message". No code at all counts as 2 UNKNOWN."""
    found = line_error(status)
    return found.kind, found.reason


def line_error(status: Mapping[str, Any]) -> LineError:
    """`classify_error` with the reason's code and the status number."""
    code = _code(status.get("code"))
    message = status.get("message")
    tail = f": {message}" if message else ""
    if code is None or code in GRPC_CODES:
        code = 2 if code is None else code
        retry = code in RETRYABLE_GRPC
        reason = f"grpc {code} {GRPC_CODES[code]}{tail}"
        return LineError("retry" if retry else "final", reason, rpc_code("grpc", retry), code)
    name = status.get("status") if isinstance(status.get("status"), str) else None
    name = name or HTTP_STATUS.get(code, "")
    label = f"http {code} {name}".rstrip()
    retry = code in RETRYABLE_HTTP
    return LineError("retry" if retry else "final", label + tail, rpc_code("http", retry), code)


def classify_status(status: Any) -> tuple[Literal["retry", "final"], str]:
    """A Vertex AI prediction line's non-empty `status` to an outcome and a reason.

    Its format is not documented (opaque text in the samples), so: a google.rpc.Status
    object, or text holding one as JSON (also wrapped as {"error": {...}}), is read as such;
    other text fails for good when it names a 400-class gRPC status (FINAL_STATUS_NAMES) or
    an HTTP 4xx other than 429, and is retried otherwise (CONTRACT section 10)."""
    found = status_error(status)
    return found.kind, found.reason


def status_error(status: Any) -> LineError:
    """`classify_status` with the reason's code (STATUS_* for text read as text)."""
    if isinstance(status, Mapping):
        inner = status.get("error")
        return line_error(inner if isinstance(inner, Mapping) else status)
    text = str(status).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, Mapping) and ("code" in parsed or "error" in parsed):
            return status_error(parsed)
    reason = f"status: {text[:500]}"
    name = _STATUS_NAME.search(text)
    if name is not None:
        final = name.group(1) in FINAL_STATUS_NAMES
    elif (http := _STATUS_HTTP.search(text)) is not None:
        code = int(http.group(1))
        final = 400 <= code < 500 and code != 429
    else:
        final = _FINAL_HTTP_PHRASES.search(text) is not None
    if final:
        return LineError("final", reason, ReasonCode.STATUS_FINAL)
    return LineError("retry", reason, ReasonCode.STATUS_RETRYABLE)


def _int(mapping: Mapping[str, Any], key: str) -> int:
    value = mapping.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(response: Mapping[str, Any]) -> Usage | None:
    meta = response.get("usageMetadata")
    if not isinstance(meta, Mapping):
        return None
    details = meta.get("candidatesTokensDetails") or []
    image = sum(
        _int(d, "tokenCount")
        for d in details
        if isinstance(d, Mapping) and d.get("modality") == "IMAGE"
    )
    return Usage(
        input=_int(meta, "promptTokenCount"),
        output_image=image,
        output_text=max(0, _int(meta, "candidatesTokenCount") - image),
        thinking=_int(meta, "thoughtsTokenCount"),
    )


def _candidates(response: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = response.get("candidates")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, Mapping)]


def _last_image(candidates: list[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(base64 data, mime type) of the last non-thought image part, or None."""
    last: tuple[str, str] | None = None
    for candidate in candidates:
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, Mapping) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, Mapping) or part.get("thought") is True:
                continue
            inline = part.get("inlineData") or part.get("inline_data")
            if not isinstance(inline, Mapping):
                continue
            mime = inline.get("mimeType") or inline.get("mime_type") or ""
            data = inline.get("data")
            if isinstance(mime, str) and mime.startswith("image/") and isinstance(data, str):
                last = (data, mime)
    return last


def _no_image(key: str | None, response: Mapping[str, Any], usage: Usage | None) -> LineOutcome:
    feedback = response.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, Mapping) else None
    if block:
        blocked = ReasonCode.PROMPT_BLOCKED
        return LineOutcome(key, "final", f"blocked: {block}", blocked, None, None, usage)
    candidates = _candidates(response)
    reasons = [str(c["finishReason"]) for c in candidates if c.get("finishReason")]
    for reason in reasons:
        if reason in SAFETY_FINISH_REASONS:
            safety = ReasonCode.SAFETY
            return LineOutcome(key, "final", f"safety: {reason}", safety, None, None, usage)
    if reasons:
        shown = f"finishReason {', '.join(reasons)}"
    else:
        shown = "no finishReason" if candidates else "no candidates"
    code = ReasonCode.MAX_TOKENS if "MAX_TOKENS" in reasons else ReasonCode.NO_IMAGE
    return LineOutcome(key, "retry", f"no image in response ({shown})", code, None, None, usage)


def classify_line(line: Mapping[str, Any]) -> LineOutcome:
    """The outcome of one parsed results line (see the module docstring for the rules)."""
    raw_key = line.get("key")
    key = None if raw_key is None else str(raw_key)
    error = line.get("error")
    if isinstance(error, Mapping):
        found = line_error(error)
        return LineOutcome(
            key, found.kind, found.reason, found.code, None, None, None, found.status
        )
    response = line.get("response")
    status = line.get("status")
    if status:  # Vertex: "" on success, the error otherwise
        found = status_error(status)
        usage = _usage(response) if isinstance(response, Mapping) else None
        return LineOutcome(
            key, found.kind, found.reason, found.code, None, None, usage, found.status
        )
    if not isinstance(response, Mapping):
        reason = "malformed line: neither response nor error"
        return LineOutcome(key, "retry", reason, ReasonCode.MALFORMED, None, None, None)
    usage = _usage(response)
    image = _last_image(_candidates(response))
    if image is None:
        return _no_image(key, response, usage)
    return LineOutcome(key, "succeeded", None, None, image[0], image[1], usage)


GONE_CODES: Final = frozenset({5, 7, 403, 404})
"""NOT_FOUND and PERMISSION_DENIED (and their HTTP twins): what the service answers for a
fileData naming a file that is missing or expired."""
_FILE_ID: Final = re.compile(r"(?:\bfiles/|\bFile )([a-z0-9][a-z0-9-]{0,39})\b")


def files_gone(line: Mapping[str, Any]) -> set[str]:
    """Ids of the Files API files a per-line NOT_FOUND / PERMISSION_DENIED error names (the
    service: "You do not have permission to access the File <id> or it may not exist.");
    empty for any other line. Whether the line referenced them is the caller's to check."""
    error = line.get("error")
    if not isinstance(error, Mapping) or _code(error.get("code")) not in GONE_CODES:
        return set()
    message = error.get("message")
    return set(_FILE_ID.findall(message)) if isinstance(message, str) else set()


# An image payload inside a results line: `"data": "<base64>"`. Base64 holds no quote or
# backslash, so the value ends at the next quote; a line where that is not so is parsed whole.
_DATA_VALUE: Final = re.compile(rb'"data"\s*:\s*"')
PAYLOAD_PREFIX: Final = "\x00payload:"


def parse_line(
    raw: bytes, start: int = 0, end: int | None = None
) -> tuple[dict[str, Any], list[memoryview]]:
    """Parse one results line, `raw[start:end]`, without running its base64 payloads
    through the JSON parser.

    Each `"data"` string value is cut out (a memoryview of `raw`, no copy) and replaced in
    the parsed object by PAYLOAD_PREFIX + its index; `payload_bytes` maps it back. A JSON
    scan of megabytes of base64 costs as much as decoding it, and this skips it; the line
    itself is not copied out of `raw` either (copying megabytes holds the interpreter).
    ValueError when the line is not JSON.
    """
    end = len(raw) if end is None else end
    view = memoryview(raw)
    pieces: list[bytes] = []
    payloads: list[memoryview] = []
    pos = found = start
    # bytes.find runs a fast substring search; the regex only checks the one place found.
    while (found := raw.find(b'"data"', found, end)) >= 0:
        match = _DATA_VALUE.match(raw, found, end)
        found += 6
        if match is None:
            continue
        value = match.end()
        close = raw.find(b'"', value, end)
        if close < 0 or raw.find(b"\\", value, close) >= 0:
            return _whole(raw[start:end])
        # Written as a JSON escape: the parsed value starts with a NUL no base64 can have.
        pieces += [raw[pos:value], b"\\u0000payload:%d" % len(payloads)]
        payloads.append(view[value:close])
        pos = found = close
    if not payloads:
        return _whole(raw[start:end])
    pieces.append(raw[pos:end])
    return json.loads(b"".join(pieces)), payloads


def _whole(raw: bytes) -> tuple[dict[str, Any], list[memoryview]]:
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("a results line must be a JSON object")
    return obj, []


def payload_bytes(b64: str, payloads: list[memoryview]) -> str | memoryview:
    """The base64 text a parsed value stands for (itself, or the payload it points at)."""
    if b64.startswith(PAYLOAD_PREFIX):
        return payloads[int(b64[len(PAYLOAD_PREFIX) :])]
    return b64


def decode_image(b64: str | bytes | memoryview) -> bytes:
    """Image bytes from base64 text in the standard or urlsafe alphabet (padding optional);
    ValueError when it is not valid base64. Bytes in the standard alphabet decode without
    a copy; anything else goes through the tolerant text path."""
    if not isinstance(b64, str):
        try:
            # pybase64 (SIMD) is ~50x faster than binascii, which holds the GIL for every
            # megabyte: in a harvest it was most of the time one core could give.
            return pybase64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            b64 = bytes(b64).decode("ascii", errors="replace")
    if "-" in b64 or "_" in b64:
        b64 = b64.translate(_URLSAFE)
    if len(b64) % 4:
        b64 += "=" * (-len(b64) % 4)
    try:
        return binascii.a2b_base64(b64, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image data is not valid base64: {exc}") from exc
