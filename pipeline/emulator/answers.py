"""Answers to request lines: each line's response or error, deterministic from its content.

Image, text and embedding models each get their own answer (a real PNG for an image, with
usageMetadata as the service reports it); line faults (`faults.LineFault`) turn a line into
an error, a block, another finish reason, a text-only answer or a missing line. Validation is
`lines`; token counts are `tokens`.

A line's outcome is a dict ``{"response": ...}`` or ``{"error": {"code", "message"}}``
(google.rpc.Status with a gRPC code), or ``None`` when a fault drops the line.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
from typing import Any

from pipeline.emulator import models
from pipeline.emulator.faults import LineFault
from pipeline.emulator.lines import FileCheck, LineError, Parsed, check_inputs, parse
from pipeline.emulator.png import png_base64
from pipeline.emulator.tokens import prompt_tokens

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


def _seed(model: str, p: Parsed) -> str:
    return f"{model}\x1f{p.prompt}\x1f{p.ratio}\x1f{p.size}"


def _caption(prompt: str, tokens: int, lead: str = "Here is the image: ") -> str:
    """About ``tokens`` tokens of text (4 characters each) made of the prompt's words."""
    words = (prompt.split() or ["image"]) * tokens
    return (lead + " ".join(words))[: tokens * 4].ljust(tokens * 4 - 3, ".")


def _usage(
    model: str, p: Parsed, image_details: list[dict[str, Any]], text_n: int, thoughts: int
) -> dict[str, Any]:
    prompt_n = prompt_tokens(model, p)
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
