"""Per-request processing: validate one request line and build its response or error.

Validation is two steps: the schema (``schema.py``: unknown fields, wrong types, unknown enum
values, with the service's wording) and the model's rules (contents present, aspect ratio and
image size the model takes, files and inline images readable). Image, text and embedding
models each get their own deterministic answer.

A line's outcome is a dict ``{"response": ...}`` or ``{"error": {"code", "message"}}``
(google.rpc.Status with a gRPC code), or ``None`` when a fault drops the line.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import json.scanner
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.emulator import models
from pipeline.emulator.faults import LineFault
from pipeline.emulator.png import png_base64
from pipeline.emulator.schema import Schema, decode_base64
from pipeline.emulator.wire import pick

# The proto messages a batch's lines and inline requests are parsed as (see schema.py).
LINE_MESSAGE = {
    "generate": "nanobatch.emulator.GenerateContentLine",
    "embed": "nanobatch.emulator.EmbedContentLine",
}
REQUEST_MESSAGE = {"generate": "GenerateContentRequest", "embed": "EmbedContentRequest"}
MODALITIES = {0: "MODALITY_UNSPECIFIED", 1: "TEXT", 2: "IMAGE", 3: "AUDIO"}
FILE_URI = re.compile(r"^(?:[a-z][a-z0-9+.-]*://[^/]+)?/?(?:v\d+[a-z]*\d*/)?files/([a-z0-9-]+)$")

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

# Files a request may name: file id -> whether it is live (uploaded here, not expired) at the
# time the batch runs. None skips the check (estimating tokens at create).
FileCheck = Callable[[str], bool]


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
    max_tokens: int | None = None
    dimensions: int | None = None


def schema_error(message: str, value: Any, *, version: str, at: str) -> str | None:
    """The service's parse error for ``value`` as ``message`` (every violation, one per
    line), or None when it parses."""
    found = Schema.load().validate(message, value, version=version, at=at)
    return "\n".join(v.description for v in found) if found else None


def check_line(obj: Any, kind: str, version: str) -> str | None:
    """The parse error of one whole input line ({"key", "request"}), or None."""
    return schema_error(LINE_MESSAGE[kind], obj, version=version, at="")


def batch_kind(model: str) -> str:
    """ "embed" for an embedding model's batch, else "generate"."""
    return "embed" if models.kind(model) == "embedding" else "generate"


def parse(model: str, request: Any, *, version: str = "v1beta", checked: bool = False) -> Parsed:
    """Validate a request (schema unless ``checked``, then the model's rules); raise
    LineError(3, ...) when the service would refuse it."""
    kind = batch_kind(model)
    if not checked:
        error = schema_error(REQUEST_MESSAGE[kind], request, version=version, at="request")
        if error is not None:
            raise LineError(3, error)
    if kind == "embed":
        return _parse_embed(model, request)
    texts, images = _content_parts(pick(request, "contents"), "GenerateContentRequest")
    config = pick(request, "generationConfig") or {}
    image_config = pick(config, "imageConfig") or {}
    modalities = [_modality(m) for m in _as_list(pick(config, "responseModalities"))]
    want_text = not modalities or "TEXT" in modalities
    want_image = not modalities or "IMAGE" in modalities
    # proto3: an empty string is the field's default, i.e. not set.
    ratio = pick(image_config, "aspectRatio") or "1:1"
    size = pick(image_config, "imageSize") or None
    if models.kind(model) == "text":
        if modalities and set(modalities) - {"TEXT"}:
            asked = ",".join(m.lower() for m in modalities)
            raise LineError(3, f"Model does not support the requested response modalities: {asked}")
        want_text, want_image, size = True, False, ""
    else:
        size = _check_image_config(model, ratio, size)
    max_tokens = pick(config, "maxOutputTokens")
    return Parsed(
        prompt="\n".join(texts),
        ratio=ratio,
        size=size,
        input_images=images,
        want_text=want_text,
        want_image=want_image,
        max_tokens=None if max_tokens is None else int(max_tokens),
    )


def _parse_embed(model: str, request: Any) -> Parsed:
    texts, images = _content_parts(_as_list(pick(request, "content")), "EmbedContentRequest")
    full = models.EMBEDDING_MODELS[model]
    dimensions = pick(request, "outputDimensionality")
    size = full if dimensions is None else int(dimensions)
    if not models.EMBEDDING_MIN_DIMENSIONS <= size <= full:
        raise LineError(
            3,
            f"* EmbedContentRequest.output_dimensionality: must be between "
            f"{models.EMBEDDING_MIN_DIMENSIONS} and {full}, got {size}.",
        )
    return Parsed("\n".join(texts), "", "", images, True, False, dimensions=size)


def _as_list(value: Any) -> list[Any]:
    """A repeated field's items: proto JSON reads a single value as a list of one."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _modality(value: Any) -> str:
    return MODALITIES.get(value, "") if isinstance(value, int) else str(value).upper()


def _content_parts(contents: Any, message: str) -> tuple[list[str], int]:
    """(text parts, input images) of schema-valid contents; LineError for empty ones."""
    texts: list[str] = []
    images = 0
    items = [c for c in _as_list(contents) if c is not None]
    if not items:
        field = "content" if message == "EmbedContentRequest" else "contents"
        raise LineError(3, f"* {message}.{field}: contents is not specified")
    for i, content in enumerate(items):
        parts = [p for p in _as_list(pick(content, "parts")) if p is not None]
        if not parts:
            where = "content" if message == "EmbedContentRequest" else f"contents[{i}]"
            raise LineError(3, f"* {message}.{where}.parts: contents.parts must not be empty.")
        for part in parts:
            text = pick(part, "text")
            if isinstance(text, str):
                texts.append(text)
            elif pick(part, "inlineData") is not None or pick(part, "fileData") is not None:
                images += 1
    return texts, images


def _check_image_config(model: str, ratio: Any, size: Any) -> str:
    """The image size to make (the model's default when none is asked); LineError for a ratio
    or size the model refuses."""
    if ratio not in models.ratios(model):
        raise LineError(
            3,
            f"Unsupported aspect ratio: {ratio}. Supported values are: "
            + ", ".join(models.ratios(model))
            + ".",
        )
    accepted = models.sizes(model)
    if size is None:
        return models.default_size(model)
    if not accepted:
        # 2.5 Flash Image has no size setting: the service refuses imageSize for it.
        raise LineError(3, f"Unsupported image size: {size}. {model} does not take an image size.")
    if size not in accepted:
        raise LineError(
            3, f"Unsupported image size: {size}. Supported values are: " + ", ".join(accepted) + "."
        )
    return str(size)


def check_inputs(request: Any, files: FileCheck | None) -> None:
    """LineError for an input the service cannot read: a ``fileData`` that names no live file
    uploaded here (7 PERMISSION_DENIED) or is no Files API URI (3), an inline image that does
    not decode (3)."""
    for content in _as_list(pick(request, "contents")) + _as_list(pick(request, "content")):
        for part in _as_list(pick(content, "parts")):
            blob = pick(part, "inlineData")
            if isinstance(blob, dict):
                _check_blob(blob)
            data = pick(part, "fileData")
            if isinstance(data, dict) and files is not None:
                _check_file(data, files)


def _check_blob(blob: dict[str, Any]) -> None:
    mime = str(pick(blob, "mimeType") or "")
    if mime and not mime.startswith("image/"):
        return  # other media (audio, PDF, text) are not looked into
    data = decode_base64(str(pick(blob, "data") or ""))
    if not data or not _is_image(data):
        raise LineError(3, "Provided image is not valid")


def _is_image(data: bytes) -> bool:
    from PIL import Image, UnidentifiedImageError  # Pillow: a nanobatch dependency already

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return False
    return True


def _check_file(data: dict[str, Any], files: FileCheck) -> None:
    uri = str(pick(data, "fileUri") or "")
    found = FILE_URI.match(uri)
    if found is None:
        raise LineError(3, f"Invalid or unsupported file uri: {uri}")
    file_id = found.group(1)
    if not files(file_id):
        raise LineError(
            7, f"You do not have permission to access the File {file_id} or it may not exist."
        )


def estimate_tokens(model: str, request: Any) -> int:
    """Enqueued-token estimate of one request: prompt tokens plus the image's output tokens
    (1 for a request the service would refuse)."""
    try:
        p = parse(model, request)
    except LineError:
        return 1
    return _prompt_tokens(model, p) + models.image_tokens(model, p.size)


def request_tokens(model: str, request: Any) -> int:
    """`estimate_tokens`, through `quick_tokens` when the request has the common shape."""
    tokens = quick_tokens(model, request)
    return estimate_tokens(model, request) if tokens is None else tokens


# Only these names take the fast path: anything else (snake_case twins, other fields, parts
# that are not plain text) goes through `parse`, whose schema check reads every field.
_QUICK_FIELDS = frozenset({"contents", "generationConfig"})
_QUICK_CONTENT = frozenset({"role", "parts"})
_QUICK_CONFIG = frozenset({"responseModalities", "imageConfig"})
_QUICK_IMAGE = frozenset({"aspectRatio", "imageSize"})
_QUICK_MODALITIES = frozenset({"TEXT", "IMAGE", "AUDIO", "MODALITY_UNSPECIFIED"})


def quick_tokens(model: str, request: Any) -> int | None:
    """`estimate_tokens` of a request in the shape nanobatch sends, or None for any other.

    The shape: camelCase ``contents`` (a non-empty list of ``{"role"?, "parts"}`` objects, each
    part ``{"text": str}``) and ``generationConfig`` (``responseModalities``, a list of modality
    names, and ``imageConfig`` with string ``aspectRatio`` / ``imageSize``), on an image model.
    It owns no rule of its own: each step reads what `parse` reads, with plain dict lookups
    (`parse` and its schema check cost tens of µs a line; a batch of a million lines is counted
    at create)."""
    if model not in models.IMAGE_MODELS:
        return None
    if type(request) is not dict or not request.keys() <= _QUICK_FIELDS:
        return None
    texts = _quick_texts(request.get("contents"))
    if texts is None:
        return None
    image_config = _quick_image_config(request.get("generationConfig"))
    if image_config is None:
        return None
    ratio = image_config.get("aspectRatio") or "1:1"
    size = image_config.get("imageSize") or None
    ratios, image_tokens = _model_table(model)
    # A ratio or size that is not one of the model's is parse's LineError: 1 token.
    if ratio not in ratios or size not in image_tokens:
        return 1
    return models.text_tokens("\n".join(texts)) + image_tokens[size]


def _quick_image_config(config: Any) -> dict[str, Any] | None:
    """The ``imageConfig`` (``{}`` when absent) of a generationConfig of the quick shape."""
    if config is None:
        return {}
    if type(config) is not dict or not config.keys() <= _QUICK_CONFIG:
        return None
    modalities = config.get("responseModalities")
    if modalities is not None:
        if type(modalities) is not list:
            return None
        for modality in modalities:
            if type(modality) is not str or modality.upper() not in _QUICK_MODALITIES:
                return None
    image_config = config.get("imageConfig")
    if image_config is None:
        return {}
    if type(image_config) is not dict or not image_config.keys() <= _QUICK_IMAGE:
        return None
    for value in image_config.values():
        if type(value) is not str:
            return None
    return image_config


def _quick_texts(contents: Any) -> list[str] | None:
    """The text parts of a non-empty list of ``{"role"?, "parts": [{"text": str}, ...]}``
    objects (parts non-empty), or None for any other contents."""
    if type(contents) is not list or not contents:
        return None
    texts: list[str] = []
    for content in contents:
        if type(content) is not dict or not content.keys() <= _QUICK_CONTENT:
            return None
        role = content.get("role")
        parts = content.get("parts")
        if (role is not None and type(role) is not str) or type(parts) is not list or not parts:
            return None
        for part in parts:
            if type(part) is not dict or part.keys() != {"text"} or type(part["text"]) is not str:
                return None
            texts.append(part["text"])
    return texts


@functools.lru_cache(maxsize=16)
def _model_table(model: str) -> tuple[frozenset[str], dict[str | None, int]]:
    """(accepted ratios, output image tokens by accepted imageSize, None for no imageSize) of
    an image model, from the `models` functions that `parse` and `estimate_tokens` call."""
    sizes: dict[str | None, int] = {s: models.image_tokens(model, s) for s in models.sizes(model)}
    sizes[None] = models.image_tokens(model, models.default_size(model))
    return frozenset(models.ratios(model)), sizes


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
    *,
    version: str = "v1beta",
    checked: bool = False,
    files: FileCheck | None = None,
    refs: str = "",
) -> dict[str, Any] | None:
    """The output of one request line (without its key), or None when the line goes missing.

    ``checked``: the request already passed the schema check (with its line or create body).
    ``files`` says which file ids are live; None skips the ``fileData`` check. ``refs``: what
    the line's reference images and seed add to its image (`references.image_salt`)."""
    if fault is not None and fault.kind == "missing":
        return None
    if fault is not None and fault.kind == "error":
        return {"error": {"code": fault.code, "message": _code_message(fault)}}
    try:
        p = parse(model, request, version=version, checked=checked)
        check_inputs(request, files)
    except LineError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    if p.dimensions is not None:
        return {"response": _embedding(model, p)}
    meta = {"modelVersion": model, "responseId": _response_id(salt, key)}
    if fault is not None and fault.kind == "block":
        usage = _usage(model, p, [], 0, 0)
        return {"response": {"promptFeedback": {"blockReason": fault.reason}, **usage, **meta}}
    if fault is not None and fault.kind == "finish":
        cand = {"finishReason": fault.reason, "index": 0}
        return {"response": {"candidates": [cand], **_usage(model, p, [], 0, 0), **meta}}
    if models.kind(model) == "text":
        return {"response": _text_answer(model, p, meta)}
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


def _text_answer(model: str, p: Parsed, meta: dict[str, Any]) -> dict[str, Any]:
    """A text model's deterministic answer: 20-120 tokens of text derived from the prompt
    (after 50-250 thought tokens on thinking models), cut at maxOutputTokens."""
    digest = _h("text", model, p.prompt)
    text_n = 20 + int.from_bytes(digest[:2], "big") % 101
    thoughts = 50 + digest[2] % 201 if model in models.THINKING_TEXT_MODELS else 0
    finish = "STOP"
    if p.max_tokens is not None and thoughts + text_n > p.max_tokens:
        # Thinking comes first and counts against the cap.
        thoughts = min(thoughts, p.max_tokens)
        text_n = p.max_tokens - thoughts
        finish = "MAX_TOKENS"
    cand: dict[str, Any] = {"finishReason": finish, "index": 0}
    if text_n:
        text = _caption(p.prompt, text_n, "Emulated answer: ") if text_n > 1 else "A"
        cand = {"content": {"role": "model", "parts": [{"text": text}]}, **cand}
    return {"candidates": [cand], **_usage(model, p, [], text_n, thoughts), **meta}


def _image_response(
    model: str, p: Parsed, scale: float, meta: dict[str, Any], refs: str = ""
) -> dict[str, Any]:
    digest = _h(model, p.prompt, p.ratio, p.size)
    pro = models.is_pro(model)
    thoughts = 100 + int.from_bytes(digest[2:4], "big") % 201 if pro else 0
    image_n = models.image_tokens(model, p.size)
    if p.max_tokens is not None and p.max_tokens < image_n:
        # Too few output tokens for the image: the candidate ends at the cap, with no image
        # (FinishReason MAX_TOKENS, https://ai.google.dev/api/generate-content#FinishReason).
        thoughts = min(thoughts, p.max_tokens)
        cand = {"finishReason": "MAX_TOKENS", "index": 0}
        return {"candidates": [cand], **_usage(model, p, [], 0, thoughts), **meta}
    w, h = models.pixel_size(model, p.ratio, p.size, scale)
    parts: list[dict[str, Any]] = []
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
    cand = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    img_tokens = [{"modality": "IMAGE", "tokenCount": image_n}]
    return {"candidates": [cand], **_usage(model, p, img_tokens, text_n, thoughts), **meta}


def _embedding(model: str, p: Parsed) -> dict[str, Any]:
    """A deterministic embedding of the documented size: unit length at the model's full size
    (truncated ones are not normalised, as the embeddings guide says)."""
    assert p.dimensions is not None
    full = models.EMBEDDING_MODELS[model]
    rng = random.Random(_h("embed", model, p.prompt))
    values = [rng.gauss(0.0, 1.0) for _ in range(full)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return {"embedding": {"values": [round(v / norm, 6) for v in values[: p.dimensions]]}}


def count_tokens(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The countTokens answer for a schema-valid CountTokensRequest: the emulator's count of
    its contents (or of its generateContentRequest's)."""
    inner = pick(body, "generateContentRequest")
    source = inner if isinstance(inner, dict) else body
    try:
        texts, images = _content_parts(pick(source, "contents"), "CountTokensRequest")
    except LineError as exc:
        raise ValueError(exc.message) from exc
    text_n = models.text_tokens("\n".join(texts)) if texts else 0
    details = [{"modality": "TEXT", "tokenCount": text_n}]
    image_n = images * models.input_image_tokens(model)
    if image_n:
        details.append({"modality": "IMAGE", "tokenCount": image_n})
    return {"totalTokens": text_n + image_n, "promptTokensDetails": details}


def _seed(model: str, p: Parsed) -> str:
    return f"{model}\x1f{p.prompt}\x1f{p.ratio}\x1f{p.size}"


def _caption(prompt: str, tokens: int, lead: str = "Here is the image: ") -> str:
    """About ``tokens`` tokens of text (4 characters each) made of the prompt's words."""
    words = (prompt.split() or ["image"]) * tokens
    return (lead + " ".join(words))[: tokens * 4].ljust(tokens * 4 - 3, ".")


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
    """(key, request, error message) of one input JSONL line (JSON only: no schema check)."""
    obj, error = _decode_object(raw)
    if obj is None:
        return None, None, error
    return _key_request(obj)


def read_line(raw: bytes, kind: str, version: str) -> tuple[str | None, Any, str | None]:
    """`decode_line`, then the schema check of the whole line (its key, its request and any
    other name in it) as the service parses it when the batch runs."""
    obj, error = _decode_object(raw)
    if obj is None:
        return None, None, error
    key, request, error = _key_request(obj)
    return key, request, error or check_line(obj, kind, version)


def _key_request(obj: dict[str, Any]) -> tuple[str | None, Any, str | None]:
    key = obj.get("key")
    key = None if key is None else str(key)
    if "request" not in obj:
        return key, None, "Invalid JSON payload received. Missing 'request'."
    return key, obj["request"], None


def _decode_object(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object of a line, None) or (None, the error message)."""
    obj = _scan_object(raw)
    if obj is None:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"Invalid JSON payload received. {exc}"
    if not isinstance(obj, dict):
        return None, "Invalid JSON payload received. Each line must be a JSON object."
    return obj, None


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
