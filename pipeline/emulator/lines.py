"""Per-request processing: validate one GenerateContentRequest and build its response or error.

A line's outcome is a dict ``{"response": ...}`` or ``{"error": {"code", "message"}}``
(google.rpc.Status with a gRPC code), or ``None`` when a fault drops the line.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import json.scanner
from dataclasses import dataclass
from typing import Any

from pipeline.emulator import models
from pipeline.emulator.faults import LineFault
from pipeline.emulator.png import png_base64
from pipeline.emulator.wire import pick, snake

REQUEST_FIELDS = (
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "model",
    "labels",
    "serviceTier",
)
KNOWN_FIELDS = frozenset(REQUEST_FIELDS) | {snake(f) for f in REQUEST_FIELDS}

CODE_MESSAGES = {
    2: "Unknown error.",
    3: "Request contains an invalid argument.",
    4: "Deadline exceeded.",
    8: "Resource has been exhausted (e.g. check quota).",
    10: "The operation was aborted.",
    13: "Internal error encountered.",
    14: "The service is currently unavailable.",
    400: "Request contains an invalid argument.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred.",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out.",
}


class LineError(Exception):
    """A per-line failure: google.rpc.Status with a gRPC code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Parsed:
    """What the emulator needs from a request."""

    prompt: str
    ratio: str
    size: str
    input_images: int
    want_text: bool
    want_image: bool


def parse(model: str, request: Any) -> Parsed:
    """Validate a GenerateContentRequest; raise LineError(3, ...) when the service would."""
    if not isinstance(request, dict):
        raise LineError(3, "Invalid JSON payload received. 'request' must be an object.")
    for name in request:
        if name not in KNOWN_FIELDS:
            raise LineError(
                3, f'Invalid JSON payload received. Unknown name "{name}": no such field.'
            )
    texts, images = _content_parts(pick(request, "contents", default=[]))
    if not texts and not images:
        raise LineError(3, "* GenerateContentRequest.contents: contents is not specified")
    config = pick(request, "generationConfig", default={}) or {}
    image_config = pick(config, "imageConfig", default={}) or {}
    ratio = pick(image_config, "aspectRatio", default="1:1")
    size = pick(image_config, "imageSize", default="1K")
    _check_image_config(model, ratio, size)
    modalities = [str(m).upper() for m in pick(config, "responseModalities", default=[]) or []]
    return Parsed(
        prompt="\n".join(texts),
        ratio=ratio,
        size=size,
        input_images=images,
        want_text=not modalities or "TEXT" in modalities,
        want_image=not modalities or "IMAGE" in modalities,
    )


def _content_parts(contents: Any) -> tuple[list[str], int]:
    if isinstance(contents, str):
        return [contents], 0
    if not isinstance(contents, list):
        raise LineError(3, "* GenerateContentRequest.contents: must be a list of Content")
    texts: list[str] = []
    images = 0
    for content in contents:
        for part in pick(content, "parts", default=[]) or []:
            text = pick(part, "text")
            if isinstance(text, str):
                texts.append(text)
            elif pick(part, "inlineData") is not None or pick(part, "fileData") is not None:
                images += 1
    return texts, images


def _check_image_config(model: str, ratio: Any, size: Any) -> None:
    if ratio not in models.ratios(model):
        raise LineError(
            3,
            f"Unsupported aspect ratio: {ratio}. Supported values are: "
            + ", ".join(models.ratios(model))
            + ".",
        )
    if size not in models.sizes(model):
        raise LineError(
            3,
            f"Unsupported image size: {size}. Supported values are: "
            + ", ".join(models.sizes(model))
            + ".",
        )


def estimate_tokens(model: str, request: Any) -> int:
    """Enqueued-token estimate of one request: prompt tokens plus the image's output tokens."""
    try:
        p = parse(model, request)
    except LineError:
        return 1
    return _prompt_tokens(model, p) + models.image_tokens(model, p.size)


def request_tokens(model: str, request: Any) -> int:
    """`estimate_tokens`, through `quick_tokens` when the request has the common shape."""
    tokens = quick_tokens(model, request)
    return estimate_tokens(model, request) if tokens is None else tokens


# Only these request fields, in camelCase, take the fast path: with no snake_case twin present,
# `pick(d, name)` is exactly `d.get(name)`, so plain dict lookups give `parse`'s values.
_QUICK_FIELDS = frozenset({"contents", "generationConfig"})
_SNAKE_CONFIG = frozenset({"image_config", "response_modalities"})
_SNAKE_IMAGE = frozenset({"aspect_ratio", "image_size"})


def quick_tokens(model: str, request: Any) -> int | None:
    """`estimate_tokens` of a request in the shape clients send, or None for any other shape.

    The shape: only camelCase ``contents`` (a list of objects whose ``parts`` is a list of
    objects) and ``generationConfig`` (see `_quick_image_config`). It owns no rule of its own:
    each step reads what `parse` reads, with plain dict lookups instead of `pick` (which costs
    a few µs a line when a batch of a million lines is created)."""
    if type(request) is not dict or not request.keys() <= _QUICK_FIELDS:
        return None
    found = _quick_parts(request.get("contents"))
    if found is None:
        return None
    texts, images = found
    if not texts and not images:
        return 1  # parse: "contents is not specified", before it looks at the config
    image_config = _quick_image_config(request.get("generationConfig") or {})
    if image_config is None:
        return None
    ratio = image_config.get("aspectRatio", "1:1")
    size = image_config.get("imageSize", "1K")
    ratios, image_tokens, per_input_image = _model_table(model)
    # A ratio or size that is not one of the model's strings is parse's LineError: 1 token.
    if type(ratio) is not str or ratio not in ratios:
        return 1
    if type(size) is not str or size not in image_tokens:
        return 1
    return models.text_tokens("\n".join(texts)) + images * per_input_image + image_tokens[size]


def _quick_image_config(config: Any) -> dict[str, Any] | None:
    """The ``imageConfig`` (``{}`` when absent) of a generationConfig object with camelCase
    names and ``responseModalities`` a list of strings, or None for any other config."""
    if type(config) is not dict or not config.keys().isdisjoint(_SNAKE_CONFIG):
        return None
    # parse reads the modalities after checking the image config; only a list of strings is
    # sure to read without raising (a true number raises TypeError), so others go the slow way.
    modalities = config.get("responseModalities") or []
    if type(modalities) is not list:
        return None
    for modality in modalities:
        if type(modality) is not str:
            return None
    image_config = config.get("imageConfig") or {}
    if type(image_config) is not dict or not image_config.keys().isdisjoint(_SNAKE_IMAGE):
        return None
    return image_config


def _quick_parts(contents: Any) -> tuple[list[str], int] | None:
    """`_content_parts` (text parts, input-image count) for a list of ``{"parts": [...]}``
    objects, or None for any other contents (a string, a missing or odd ``parts``, a part that
    is not an object or names inline_data / file_data in snake_case)."""
    if type(contents) is not list:
        return None
    texts: list[str] = []
    images = 0
    for content in contents:
        parts = content.get("parts") if type(content) is dict else None
        if type(parts) is not list:
            return None
        for part in parts:
            if type(part) is not dict:
                return None
            text = part.get("text")
            if type(text) is str:
                texts.append(text)
            elif "inline_data" in part or "file_data" in part:
                return None
            elif part.get("inlineData") is not None or part.get("fileData") is not None:
                images += 1
    return texts, images


@functools.lru_cache(maxsize=16)
def _model_table(model: str) -> tuple[frozenset[str], dict[str, int], int]:
    """(accepted ratios, output image tokens by accepted size, tokens per input image) of a
    model, from the `models` functions that `parse` and `estimate_tokens` call."""
    sizes = {size: models.image_tokens(model, size) for size in models.sizes(model)}
    return frozenset(models.ratios(model)), sizes, models.input_image_tokens(model)


def _prompt_tokens(model: str, p: Parsed) -> int:
    return models.text_tokens(p.prompt) + p.input_images * models.input_image_tokens(model)


def _h(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()


def serve(
    model: str,
    key: str,
    request: Any,
    fault: LineFault | None,
    scale: float,
    salt: str,
    refs: str = "",
) -> dict[str, Any] | None:
    """The output of one request line (without its key), or None when the line goes missing.
    ``refs``: what the line's reference images and seed add to its image (`references.check`)."""
    if fault is not None and fault.kind == "missing":
        return None
    if fault is not None and fault.kind == "error":
        return {"error": {"code": fault.code, "message": _code_message(fault)}}
    try:
        p = parse(model, request)
    except LineError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    meta = {"modelVersion": model, "responseId": _response_id(salt, key)}
    if fault is not None and fault.kind == "block":
        usage = _usage(model, p, [], 0, 0)
        return {"response": {"promptFeedback": {"blockReason": fault.reason}, **usage, **meta}}
    if fault is not None and fault.kind == "finish":
        cand = {"finishReason": fault.reason, "index": 0}
        return {"response": {"candidates": [cand], **_usage(model, p, [], 0, 0), **meta}}
    if (fault is not None and fault.kind == "text_only") or not p.want_image:
        return {"response": _text_only(model, p, meta)}
    return {"response": _image_response(model, p, scale, meta, refs)}


def _code_message(fault: LineFault) -> str:
    return fault.message or CODE_MESSAGES.get(fault.code, "Request failed.")


def _response_id(salt: str, key: str) -> str:
    return base64.urlsafe_b64encode(_h("rid", salt, key)[:18]).decode("ascii").rstrip("=")


def _text_only(model: str, p: Parsed, meta: dict[str, Any]) -> dict[str, Any]:
    text = f"I can describe it instead: {p.prompt[:200]}"
    n = models.text_tokens(text)
    content = {"role": "model", "parts": [{"text": text}]}
    cand: dict[str, Any] = {"content": content, "finishReason": "STOP", "index": 0}
    return {"candidates": [cand], **_usage(model, p, [], n, 0), **meta}


def _image_response(
    model: str, p: Parsed, scale: float, meta: dict[str, Any], refs: str = ""
) -> dict[str, Any]:
    w, h = models.pixel_size(model, p.ratio, p.size, scale)
    digest = _h(model, p.prompt, p.ratio, p.size)
    parts: list[dict[str, Any]] = []
    pro = models.is_pro(model)
    gemini3 = model != models.FLASH25
    signature = base64.b64encode(_h("sig", digest.hex())[:24]).decode("ascii")
    if pro and digest[0] % 3 == 0:
        data = png_base64(f"thought\x1f{model}\x1f{p.prompt}", w, h)
        parts.append({"inlineData": {"mimeType": "image/png", "data": data}, "thought": True})
    text_n = 0
    if pro or p.want_text:
        text_n = 10 + digest[1] % 31
        text = _caption(p.prompt, text_n)
        parts.append({"text": text, "thoughtSignature": signature} if gemini3 else {"text": text})
    image: dict[str, Any] = {
        "inlineData": {"mimeType": "image/png", "data": png_base64(_seed(model, p) + refs, w, h)}
    }
    if gemini3:
        image["thoughtSignature"] = signature
    parts.append(image)
    thoughts = 100 + int.from_bytes(digest[2:4], "big") % 201 if pro else 0
    cand = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    img_tokens = [{"modality": "IMAGE", "tokenCount": models.image_tokens(model, p.size)}]
    return {"candidates": [cand], **_usage(model, p, img_tokens, text_n, thoughts), **meta}


def _seed(model: str, p: Parsed) -> str:
    return f"{model}\x1f{p.prompt}\x1f{p.ratio}\x1f{p.size}"


def _caption(prompt: str, tokens: int) -> str:
    words = (prompt.split() or ["image"]) * tokens
    return ("Here is the image: " + " ".join(words))[: tokens * 4].ljust(tokens * 4 - 3, ".")


def _usage(
    model: str, p: Parsed, image_details: list[dict[str, Any]], text_n: int, thoughts: int
) -> dict[str, Any]:
    prompt_n = _prompt_tokens(model, p)
    details = [{"modality": "TEXT", "tokenCount": models.text_tokens(p.prompt)}]
    if p.input_images:
        details.append(
            {"modality": "IMAGE", "tokenCount": p.input_images * models.input_image_tokens(model)}
        )
    candidates = sum(d["tokenCount"] for d in image_details) + text_n
    usage: dict[str, Any] = {"promptTokenCount": prompt_n}
    if candidates:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = prompt_n + candidates + thoughts
    usage["promptTokensDetails"] = details
    if image_details:
        usage["candidatesTokensDetails"] = image_details
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {"usageMetadata": usage}


def decode_line(raw: bytes) -> tuple[str | None, Any, str | None]:
    """(key, request, error message) of one input JSONL line."""
    obj = _scan_object(raw)
    if obj is None:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, None, f"Invalid JSON payload received. {exc}"
    if not isinstance(obj, dict):
        return None, None, "Invalid JSON payload received. Each line must be a JSON object."
    key = obj.get("key")
    key = None if key is None else str(key)
    if "request" not in obj:
        return key, None, "Invalid JSON payload received. Missing 'request'."
    return key, obj["request"], None


def line_tokens(model: str, raw: bytes) -> tuple[str | None, int]:
    """(key, `request_tokens`) of one input JSONL line: what a batch's create needs of it."""
    key, request, _ = decode_line(raw)
    return key, request_tokens(model, request)


# The C scanner behind json.loads, called directly: json.loads(bytes) also sniffs the encoding
# and runs two regex matches, about a third of its time on a short request line.
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
_JSON_SPACE = " \t\n\r"


def _scan_object(raw: bytes) -> dict[str, Any] | None:
    """json.loads(raw) for a line that is one JSON object in UTF-8, else None (the caller then
    runs json.loads itself, for its result or its error message)."""
    # Only a line starting with "{" (the others, incl. a BOM or leading space, take the slow
    # way). json.loads reads it as UTF-8 unless a NUL follows (its detect_encoding: UTF-16 or
    # UTF-32), and "{" then NUL never scans, so the text decoded here is the one it reads.
    if raw[:1] != b"{":
        return None
    try:
        text = raw.decode("utf-8", "surrogatepass")
        obj, end = _SCAN(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    # json.loads accepts only JSON whitespace after the value ("Extra data" otherwise).
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        return None
    return obj if type(obj) is dict else None
