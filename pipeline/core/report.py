"""The per-image account (CONTRACT section 5) built from ledger rows: item rows, the run's
summary, and the text table. Pure: the shell streams rows in and renders what comes out.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.values import nanos_to_usd

ITEM_FIELDS = (
    "key",
    "status",
    "attempts",
    "model",
    "uri",
    "sha256",
    "input_tokens",
    "output_image_tokens",
    "output_text_tokens",
    "thinking_tokens",
    "cost_usd",
    "cached",
    "error",
    "references",
    "seed",
    "duplicates",
)
_STATUS = {"queued": "pending", "in_batch": "pending"}


def item_row(item: Any, sums: Mapping[str, Any]) -> dict[str, Any]:
    """One report row from an item and the sums over its attempts."""
    return {
        "key": item.key,
        "status": _STATUS.get(item.state, item.state),
        "attempts": int(sums["attempts"]),
        "model": sums.get("served_by") or item.model,
        "uri": item.uri,
        "sha256": item.sha256,
        "input_tokens": int(sums["input_tokens"]),
        "output_image_tokens": int(sums["output_image_tokens"]),
        "output_text_tokens": int(sums["output_text_tokens"]),
        "thinking_tokens": int(sums["thinking_tokens"]),
        "cost_usd": nanos_to_usd(int(sums["cost_nanos"])),
        "cached": bool(item.cached),
        "error": item.error if item.state != "succeeded" else None,
        "references": item.refs.split(",") if item.refs else [],
        "seed": item.seed,
        # Other lines for the item's key in its batches' results (Vertex AI): billed, in
        # the cost and tokens above, not tries (CONTRACT section 10).
        "duplicates": int(sums.get("duplicates", 0)),
    }


def flat_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A report row for a flat table (CSV): `references` as comma-separated sha256s."""
    return {**row, "references": ",".join(row["references"])}


@dataclass
class Summary:
    items: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    cancelled: int = 0
    rejected: int = 0
    cached: int = 0
    cost_nanos: int = 0
    standard_nanos: int = 0
    saved_by_cache_nanos: int = 0
    duplicates: int = 0
    tokens: dict[str, int] = field(
        default_factory=lambda: {"input": 0, "output_image": 0, "output_text": 0, "thinking": 0}
    )

    def add(self, row: Mapping[str, Any], sums: Mapping[str, Any]) -> None:
        self.items += 1
        status = row["status"]
        if status in ("succeeded", "failed", "pending", "cancelled"):
            setattr(self, status, getattr(self, status) + 1)
        self.cached += int(bool(row["cached"]))
        self.cost_nanos += int(sums["cost_nanos"])
        self.standard_nanos += int(sums["standard_nanos"])
        self.duplicates += int(sums.get("duplicates", 0))
        for name in self.tokens:
            self.tokens[name] += int(sums[f"{name}_tokens"])

    def asdict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "pending": self.pending,
            "cancelled": self.cancelled,
            "rejected": self.rejected,
            "cached": self.cached,
            "cost_usd": nanos_to_usd(self.cost_nanos),
            "standard_cost_usd": nanos_to_usd(self.standard_nanos),
            "saved_by_cache_usd": nanos_to_usd(self.saved_by_cache_nanos),
            "duplicates": self.duplicates,
            "tokens": dict(self.tokens),
        }


def rows_and_summary(
    entries: Iterable[Mapping[str, Any]], summary: Summary
) -> Iterator[dict[str, Any]]:
    """Item rows from `repo.report_rows` entries, adding each into `summary` as it passes."""
    for entry in entries:
        row = item_row(entry["item"], entry)
        summary.add(row, entry)
        yield row


KEY_WIDTH = 28
"""Characters of the table's key column."""

CUT_HASH_DIGITS = 6
"""Hex digits of sha256(key) that end a key shown changed (escaped or cut) in the table."""

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a CSV cell as a formula (OWASP: CSV injection)."""


def csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A report row for CSV: text cells starting with = + - @ tab or CR get a leading `'`,
    so spreadsheet tools show them as text instead of running them."""
    return {
        name: "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value
        for name, value in row.items()
    }


def printable(text: str) -> str:
    """`text` with control, format (bidi, zero-width) and separator characters escaped as
    Python does (`\\x1b`, `\\u202e`), fit to print on a terminal."""
    if text.isprintable():
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii") if _unprintable(c) else c for c in text
    )


def _unprintable(c: str) -> bool:
    return unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")


def shown_key(key: str, width: int = KEY_WIDTH) -> str:
    """The key as the table shows it, at most `width` characters. A key that had to be
    escaped or cut ends with `~` and a short hash of the whole key, so keys that differ only
    in what was escaped or cut away still look different."""
    shown = printable(key)
    if shown == key and len(key) <= width:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:CUT_HASH_DIGITS]
    return f"{shown[: width - CUT_HASH_DIGITS - 1]}~{digest}"


def table_line(row: Mapping[str, Any]) -> str:
    """One line of the text table: enough tokens to check the cost by hand."""
    cost = f"${row['cost_usd']:.6f}"
    where = printable(row["uri"] or (row["error"] or ""))
    return (
        f"{shown_key(row['key']):<{KEY_WIDTH}} {row['status']:<10} {row['attempts']:>3} "
        f"{row['input_tokens']:>6} {row['output_image_tokens']:>6} {row['output_text_tokens']:>6} "
        f"{row['thinking_tokens']:>6} {cost:>10}  {where}"
    )


TABLE_HEADER = (
    f"{'key':<{KEY_WIDTH}} {'status':<10} {'try':>3} {'input':>6} {'image':>6} {'text':>6} "
    f"{'think':>6} {'cost':>10}  uri / error"
)
