"""Token counts of request lines: the enqueued-token estimate a batch's create needs (with
a fast path for the shape nanobatch sends) and the countTokens answer.

The counts follow `lines.parse` (a request the service would refuse counts 1 token) and the
`models` tables; the answers that report usage are `answers`.
"""

from __future__ import annotations

import functools
from typing import Any

from pipeline.emulator import models
from pipeline.emulator.lines import LineError, Parsed, content_parts, decode_line, parse
from pipeline.emulator.wire import pick


def estimate_tokens(model: str, request: Any) -> int:
    """Enqueued-token estimate of one request: prompt tokens plus the image's output tokens
    (1 for a request the service would refuse)."""
    try:
        p = parse(model, request)
    except LineError:
        return 1
    return prompt_tokens(model, p) + models.image_tokens(model, p.size)


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


def prompt_tokens(model: str, p: Parsed) -> int:
    """Prompt tokens of a parsed request: its text and its input images."""
    return models.text_tokens(p.prompt) + p.input_images * models.input_image_tokens(model)


def count_tokens(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The countTokens answer for a schema-valid CountTokensRequest: the emulator's count of
    its contents (or of its generateContentRequest's)."""
    inner = pick(body, "generateContentRequest")
    source = inner if isinstance(inner, dict) else body
    try:
        texts, images = content_parts(pick(source, "contents"), "CountTokensRequest")
    except LineError as exc:
        raise ValueError(exc.message) from exc
    text_n = models.text_tokens("\n".join(texts)) if texts else 0
    details = [{"modality": "TEXT", "tokenCount": text_n}]
    image_n = images * models.input_image_tokens(model)
    if image_n:
        details.append({"modality": "IMAGE", "tokenCount": image_n})
    return {"totalTokens": text_n + image_n, "promptTokensDetails": details}


def line_tokens(model: str, raw: bytes) -> tuple[str | None, int]:
    """(key, `request_tokens`) of one input JSONL line: what a batch's create needs of it."""
    key, request, _ = decode_line(raw)
    return key, request_tokens(model, request)
