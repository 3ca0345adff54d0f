"""Independent checks for the end-to-end tests: the contract's shapes, a price table of our
own, and token/cost arithmetic from the emulator's raw results. Deliberately imports nothing
from pipeline.core.pricing or pipeline.core.catalog, so a pricing bug cannot hide in both places."""

from __future__ import annotations

import base64
import hashlib
from decimal import Decimal
from typing import Any

# USD per 1M tokens at the batch price (half the interactive price).
BATCH_PRICES: dict[str, dict[str, Decimal]] = {
    "gemini-3-pro-image-preview": {
        "input": Decimal("1.00"),
        "text": Decimal("6.00"),
        "image": Decimal("60.00"),
    },
    "gemini-2.5-flash-image": {
        "input": Decimal("0.15"),
        "text": Decimal("1.25"),
        "image": Decimal("15.00"),
    },
}
MILLION = Decimal(1_000_000)

REPORT_TOP = {"run": str, "job": str, "model": str, "summary": dict, "items": list}
SUMMARY_FIELDS = {
    "items": int,
    "succeeded": int,
    "failed": int,
    "pending": int,
    "rejected": int,
    "cost_usd": (int, float),
    "standard_cost_usd": (int, float),
    "tokens": dict,
}
TOKEN_FIELDS = ("input", "output_image", "output_text", "thinking")
ITEM_FIELDS: dict[str, Any] = {
    "key": str,
    "status": str,
    "attempts": int,
    "model": str,
    "uri": (str, type(None)),
    "sha256": (str, type(None)),
    "input_tokens": int,
    "output_image_tokens": int,
    "output_text_tokens": int,
    "thinking_tokens": int,
    "cost_usd": (int, float),
    "cached": bool,
    "error": (str, type(None)),
    "references": list,
    "seed": (int, type(None)),
    "duplicates": int,
}
ITEM_STATUSES = {"succeeded", "failed", "pending", "cancelled"}

STATUS_RUN_FIELDS: dict[str, Any] = {
    "run": str,
    "job": str,
    "state": str,
    "items": dict,
    "batches": dict,
    "cost_usd": (int, float),
    "estimated_usd": (int, float),
    "waiting": (str, type(None)),
}
STATUS_ITEM_COUNTS = ("pending", "succeeded", "failed", "cancelled", "rejected")


def _is(value: Any, kind: Any) -> bool:
    if isinstance(value, bool) and kind is not bool:
        return False  # a bool is an int to isinstance, never to the contract
    return isinstance(value, kind)


def check_report_shape(report: dict[str, Any]) -> None:
    """CONTRACT section 5: top keys, summary keys and types, item keys (exactly) and types."""
    for name, kind in REPORT_TOP.items():
        assert name in report, f"report has no {name!r}"
        assert _is(report[name], kind), f"report[{name!r}] = {report[name]!r}"
    summary = report["summary"]
    for name, kind in SUMMARY_FIELDS.items():
        assert name in summary, f"summary has no {name!r}"
        assert _is(summary[name], kind), f"summary[{name!r}] = {summary[name]!r}"
    assert set(summary["tokens"]) == set(TOKEN_FIELDS)
    assert all(_is(v, int) for v in summary["tokens"].values())
    for item in report["items"]:
        check_item_shape(item)


def check_item_shape(item: dict[str, Any]) -> None:
    """One report item row: exactly the contract's fields, with the contract's types."""
    assert list(item) == list(ITEM_FIELDS), f"item fields {list(item)}"
    for name, kind in ITEM_FIELDS.items():
        assert _is(item[name], kind), f"item {item['key']}: {name} = {item[name]!r}"
    assert item["status"] in ITEM_STATUSES


def check_status_shape(status: dict[str, Any]) -> None:
    """CONTRACT section 3: `status --json`."""
    assert isinstance(status["runs"], list)
    for run in status["runs"]:
        for name, kind in STATUS_RUN_FIELDS.items():
            assert name in run, f"status run has no {name!r}"
            assert _is(run[name], kind), f"status run {name} = {run[name]!r}"
        assert run["state"] in ("active", "finished", "cancelled")
        for name in STATUS_ITEM_COUNTS:
            assert _is(run["items"][name], int), f"items.{name} = {run['items'].get(name)!r}"
        assert all(_is(v, int) for v in run["batches"].values())


def line_tokens(line: dict[str, Any]) -> dict[str, int]:
    """Billed tokens of one results line, from its usageMetadata (CONTRACT section 5)."""
    usage = line.get("response", {}).get("usageMetadata", {})
    image = sum(
        d.get("tokenCount", 0)
        for d in usage.get("candidatesTokensDetails", [])
        if d.get("modality") == "IMAGE"
    )
    return {
        "input_tokens": usage.get("promptTokenCount", 0),
        "output_image_tokens": image,
        "output_text_tokens": usage.get("candidatesTokenCount", 0) - image,
        "thinking_tokens": usage.get("thoughtsTokenCount", 0),
    }


def tokens_cost(model: str, tokens: dict[str, int]) -> Decimal:
    """Exact batch-price cost of these tokens (thinking billed at the text rate)."""
    p = BATCH_PRICES[model]
    total = (
        tokens["input_tokens"] * p["input"]
        + tokens["output_image_tokens"] * p["image"]
        + (tokens["output_text_tokens"] + tokens["thinking_tokens"]) * p["text"]
    )
    return total / MILLION


def final_image(line: dict[str, Any]) -> bytes:
    """The bytes of the last non-thought image of a results line."""
    parts = line["response"]["candidates"][0]["content"]["parts"]
    images = [p for p in parts if "inlineData" in p and not p.get("thought")]
    return base64.b64decode(images[-1]["inlineData"]["data"])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


API_KEY = "e2e-secret-key-7f3a9c1d5b"
