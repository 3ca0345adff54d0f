"""Reason codes: where each is decided, the error class each folds into, the policy reading
codes instead of text, and waiting reasons as typed values."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from pipeline.core import policy
from pipeline.core.reasons import (
    BATCH_END,
    NO_FALLBACK,
    ReasonCode,
    WaitCode,
    Waiting,
    error_class,
)
from pipeline.core.results import classify_line

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
IMAGE = base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()


def _candidate(finish: str | None, image: bool = False) -> dict[str, Any]:
    parts = [{"inlineData": {"mimeType": "image/png", "data": IMAGE}}] if image else []
    candidate: dict[str, Any] = {"content": {"parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    return candidate


LINES: list[tuple[dict[str, Any], ReasonCode | None, int | None]] = [
    ({"key": "k", "response": {"candidates": [_candidate("STOP", True)]}}, None, None),
    ({"key": "k", "error": {"code": 13, "message": "x"}}, ReasonCode.GRPC_RETRYABLE, 13),
    ({"key": "k", "error": {"message": "no code"}}, ReasonCode.GRPC_RETRYABLE, 2),
    ({"key": "k", "error": {"code": 3}}, ReasonCode.GRPC_FINAL, 3),
    ({"key": "k", "error": {"code": 503}}, ReasonCode.HTTP_RETRYABLE, 503),
    ({"key": "k", "error": {"code": 400}}, ReasonCode.HTTP_FINAL, 400),
    ({"key": "k", "status": "the model is overloaded"}, ReasonCode.STATUS_RETRYABLE, None),
    ({"key": "k", "status": "INVALID_ARGUMENT: bad"}, ReasonCode.STATUS_FINAL, None),
    ({"key": "k", "status": {"code": 8, "message": "q"}}, ReasonCode.GRPC_RETRYABLE, 8),
    ({"key": "k", "status": '{"error": {"code": 7}}'}, ReasonCode.GRPC_FINAL, 7),
    (
        {"key": "k", "response": {"promptFeedback": {"blockReason": "OTHER"}}},
        ReasonCode.PROMPT_BLOCKED,
        None,
    ),
    (
        {"key": "k", "response": {"candidates": [_candidate("IMAGE_SAFETY")]}},
        ReasonCode.SAFETY,
        None,
    ),
    (
        {"key": "k", "response": {"candidates": [_candidate("MAX_TOKENS")]}},
        ReasonCode.MAX_TOKENS,
        None,
    ),
    ({"key": "k", "response": {"candidates": [_candidate("STOP")]}}, ReasonCode.NO_IMAGE, None),
    ({"key": "k", "response": {}}, ReasonCode.NO_IMAGE, None),
    ({"key": "k"}, ReasonCode.MALFORMED, None),
]


@pytest.mark.parametrize(("line", "code", "status"), LINES)
def test_line_classification_gives_a_code(
    line: dict[str, Any], code: ReasonCode | None, status: int | None
) -> None:
    out = classify_line(line)
    assert (out.code, out.status) == (code, status)
    assert (out.reason is None) == (code is None)
    assert out.safety == (code in NO_FALLBACK)


# Decided outside the results line, each where its outcome is known (see core.reasons).
SHELL_CODES = {
    ReasonCode.REFERENCE_GONE: "shell/harvest_lines.py",
    ReasonCode.DUPLICATE: "shell/harvest_lines.py",
    ReasonCode.CONFLICT: "shell/harvest_lines.py",
    ReasonCode.UNSTORED: "shell/harvest_lines.py",
    ReasonCode.MISSING: "shell/harvest.py",
    ReasonCode.FALLBACK_REFUSED: "shell/harvest.py",
    ReasonCode.RUN_CANCELLED: "shell/poll.py",
    ReasonCode.CREATE_REFUSED: "adapters/ledger/outcomes.py",
    ReasonCode.REFERENCE_UNSENT: "adapters/ledger/references.py",
}


def test_every_code_is_reachable() -> None:
    """Each code is produced somewhere: by the line classification, the poll (a batch ended
    without output), a named shell or ledger function, or (OTHER) the 0010 backfill."""
    from_lines = {code for _, code, _ in LINES if code is not None}
    from_poll = set(BATCH_END.values())
    assert "BATCH_END" in (PIPELINE / "shell/poll.py").read_text()
    for code, module in SHELL_CODES.items():
        source = (PIPELINE / module).read_text()
        assert f"ReasonCode.{code.name}" in source, (code, module)
    backfill = {ReasonCode.OTHER}
    assert from_lines | from_poll | set(SHELL_CODES) | backfill == set(ReasonCode)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        (ReasonCode.GRPC_RETRYABLE, 13, "grpc_13"),
        (ReasonCode.GRPC_FINAL, 3, "grpc_3"),
        (ReasonCode.HTTP_RETRYABLE, 429, "http_429"),
        (ReasonCode.HTTP_FINAL, 404, "http_404"),
        (ReasonCode.GRPC_FINAL, None, "other"),
        (ReasonCode.SAFETY, None, "safety"),
        (ReasonCode.PROMPT_BLOCKED, None, "safety"),
        (ReasonCode.MAX_TOKENS, None, "no_image"),
        (ReasonCode.BATCH_CANCELLED, None, "batch_cancelled"),
        (ReasonCode.UNSTORED, None, "cancelled"),
        (ReasonCode.REFERENCE_GONE, None, "other"),
        (None, None, "other"),
        ("not-a-code", None, "other"),
    ],
)
def test_error_class_of_a_code(code: str | None, status: int | None, expected: str) -> None:
    assert error_class(code, status) == expected


def _decide(outcome: policy.Outcome, code: ReasonCode | None, **kw: Any) -> policy.Next:
    args: dict[str, Any] = {
        "tries_after": 1,
        "max_attempts": 3,
        "model": "m1",
        "fallback_model": "m2",
        "fallback_used": False,
    }
    return policy.decide(outcome, code=code, **{**args, **kw})


def test_policy_reads_codes_for_the_fallback() -> None:
    """A safety block fails for good without the fallback; any other final error gets it."""
    assert _decide("final", ReasonCode.SAFETY) == policy.Next("failed", final=True)
    assert _decide("final", ReasonCode.PROMPT_BLOCKED) == policy.Next("failed", final=True)
    assert _decide("final", ReasonCode.GRPC_FINAL) == policy.Next("queued", model="m2")
    assert _decide("retry", ReasonCode.NO_IMAGE) == policy.Next("queued")
    out_of_tries = _decide("retry", ReasonCode.GRPC_RETRYABLE, tries_after=3)
    assert out_of_tries == policy.Next("queued", model="m2")
    after = _decide("final", ReasonCode.SAFETY, fallback_used=True)
    assert after == policy.Next("failed", final=True)


def test_waiting_reasons_are_typed() -> None:
    """Budgets are told apart by code, whatever the text says."""
    run = Waiting(WaitCode.RUN_BUDGET, "run budget: spent $1")
    assert run.budget and str(run) == "run budget: spent $1"
    assert Waiting(WaitCode.DAILY_BUDGET, "x").budget
    assert not Waiting(WaitCode.QUOTA, "enqueued-token quota, not a budget").budget
    assert not Waiting(WaitCode.HELD, "held (storage): budget.png unwritable").budget
