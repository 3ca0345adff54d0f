from __future__ import annotations

import base64

import pytest

from pipeline.core.results import classify_error, classify_line, decode_image
from pipeline.core.values import Usage

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
B64 = base64.b64encode(PNG).decode()


def _part(data: str, thought: bool = False, mime: str = "image/png") -> dict:
    part: dict = {"inlineData": {"mimeType": mime, "data": data}}
    if thought:
        part["thought"] = True
    return part


def _response(parts: list[dict], finish: str | None = "STOP", **extra: object) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": 1223,
    "thoughtsTokenCount": 106,
    "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
}


def test_success_takes_last_non_thought_image_and_usage() -> None:
    parts = [
        {"text": "Planning", "thought": True},
        _part("dGhvdWdodA==", thought=True),
        {"text": "Here it is", "thoughtSignature": "x"},
        _part(B64, mime="image/jpeg"),
        _part("dGhvdWdodDI=", thought=True),
    ]
    out = classify_line({"key": "k1", "response": _response(parts, usageMetadata=USAGE)})
    assert out.kind == "succeeded" and out.reason is None and out.key == "k1"
    assert out.image_b64 == B64 and out.mime == "image/jpeg" and not out.safety
    assert out.usage == Usage(input=12, output_image=1120, output_text=103, thinking=106)
    assert decode_image(out.image_b64) == PNG


def test_only_thought_images_is_retry() -> None:
    out = classify_line({"key": "k", "response": _response([_part(B64, thought=True)])})
    assert out.kind == "retry" and out.reason == "no image in response (finishReason STOP)"
    assert out.image_b64 is None


def test_usage_edge_cases() -> None:
    meta = {
        "candidatesTokenCount": 5,
        "candidatesTokensDetails": [
            {"modality": "IMAGE", "tokenCount": 7},
            {"modality": "TEXT", "tokenCount": 3},
        ],
    }
    out = classify_line({"key": "k", "response": _response([_part(B64)], usageMetadata=meta)})
    assert out.usage == Usage(input=0, output_image=7, output_text=0, thinking=0)
    assert classify_line({"key": "k", "response": _response([_part(B64)])}).usage is None


@pytest.mark.parametrize(
    "reason",
    [
        "IMAGE_SAFETY",
        "SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
    ],
)
def test_safety_finish_reasons_are_final(reason: str) -> None:
    out = classify_line({"key": "k", "response": _response([{"text": "no"}], reason)})
    assert (out.kind, out.reason, out.safety) == ("final", f"safety: {reason}", True)


@pytest.mark.parametrize("reason", ["IMAGE_OTHER", "NO_IMAGE", "RECITATION", "MAX_TOKENS", "OTHER"])
def test_other_finish_reasons_retry(reason: str) -> None:
    out = classify_line({"key": "k", "response": _response([], reason)})
    assert (out.kind, out.safety) == ("retry", False)
    assert out.reason == f"no image in response (finishReason {reason})"


def test_image_wins_over_finish_reason() -> None:
    out = classify_line({"key": "k", "response": _response([_part(B64)], "IMAGE_SAFETY")})
    assert out.kind == "succeeded"


def test_prompt_blocked() -> None:
    response = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": USAGE}
    out = classify_line({"key": "k", "response": response})
    assert (out.kind, out.reason, out.safety) == ("final", "blocked: PROHIBITED_CONTENT", True)
    assert out.usage is not None


def test_no_candidates_and_malformed() -> None:
    assert (
        classify_line({"key": "k", "response": {}}).reason == "no image in response (no candidates)"
    )
    out = classify_line({"key": "k"})
    assert (out.kind, out.reason) == ("retry", "malformed line: neither response nor error")
    assert classify_line({"response": {}}).key is None
    assert classify_line({"key": 7, "response": {}}).key == "7"


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (2, "UNKNOWN"),
        (4, "DEADLINE_EXCEEDED"),
        (8, "RESOURCE_EXHAUSTED"),
        (10, "ABORTED"),
        (13, "INTERNAL"),
        (14, "UNAVAILABLE"),
    ],
)
def test_retryable_grpc(code: int, name: str) -> None:
    out = classify_line({"key": "k", "error": {"code": code, "message": "boom"}})
    assert (out.kind, out.reason, out.safety) == ("retry", f"grpc {code} {name}: boom", False)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (3, "INVALID_ARGUMENT"),
        (5, "NOT_FOUND"),
        (7, "PERMISSION_DENIED"),
        (9, "FAILED_PRECONDITION"),
        (1, "CANCELLED"),
        (16, "UNAUTHENTICATED"),
    ],
)
def test_final_grpc(code: int, name: str) -> None:
    assert classify_error({"code": code, "message": "m"}) == ("final", f"grpc {code} {name}: m")


@pytest.mark.parametrize("code", [429, 500, 503, 504])
def test_retryable_http(code: int) -> None:
    kind, reason = classify_error({"code": code, "message": "x"})
    assert kind == "retry" and reason.startswith(f"http {code} ")


@pytest.mark.parametrize("code", [400, 401, 403, 404, 418, 501])
def test_final_http(code: int) -> None:
    kind, reason = classify_error({"code": code})
    assert kind == "final" and reason.startswith(f"http {code}")


def test_error_without_code_and_string_code() -> None:
    assert classify_error({}) == ("retry", "grpc 2 UNKNOWN")
    assert classify_error({"code": "13"})[0] == "retry"
    assert classify_error({"code": 429, "status": "RESOURCE_EXHAUSTED"}) == (
        "retry",
        "http 429 RESOURCE_EXHAUSTED",
    )


def test_decode_image_alphabets() -> None:
    data = bytes([251, 255, 191, 0, 1])
    assert decode_image(base64.b64encode(data).decode()) == data
    assert decode_image(base64.urlsafe_b64encode(data).decode()) == data
    assert decode_image(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    with pytest.raises(ValueError):
        decode_image("not base64!!")


def test_files_named_by_a_permission_or_not_found_error() -> None:
    """A line failing with 7 or 5 (or HTTP 403/404) names the file it could not read: those
    ids are what harvest matches against the line's reference images."""
    from pipeline.core.results import files_gone

    msg = "You do not have permission to access the File abc123 or it may not exist."
    assert files_gone({"key": "k", "error": {"code": 7, "message": msg}}) == {"abc123"}
    uri = "https://generativelanguage.googleapis.com/v1beta/files/x-9 not found"
    assert files_gone({"key": "k", "error": {"code": 404, "message": uri}}) == {"x-9"}
    assert files_gone({"key": "k", "error": {"code": 5, "message": "files/a1 and files/b2"}}) == {
        "a1",
        "b2",
    }
    assert files_gone({"key": "k", "error": {"code": 3, "message": "File abc is bad"}}) == set()
    assert files_gone({"key": "k", "error": {"code": 7}}) == set()
    assert files_gone({"key": "k", "response": {}}) == set()
