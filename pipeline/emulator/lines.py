"""Request lines read and checked: decode one JSONL line, parse its request, validate it.

Validation is two steps: the schema (``schema.py``: unknown fields, wrong types, unknown enum
values, with the service's wording) and the model's rules (contents present, aspect ratio and
image size the model takes, files and inline images readable); a refused request raises
`LineError` with its gRPC code. The answers are `answers`, the token counts `tokens`.
"""

from __future__ import annotations

import io
import json
import json.scanner
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.emulator import models
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
    texts, images = content_parts(pick(request, "contents"), "GenerateContentRequest")
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
    texts, images = content_parts(_as_list(pick(request, "content")), "EmbedContentRequest")
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


def content_parts(contents: Any, message: str) -> tuple[list[str], int]:
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
