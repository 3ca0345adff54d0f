"""The per-image account (CONTRACT section 5) built from ledger rows: item rows, the run's
summary, and the text table. Pure: the shell streams rows in and renders what comes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.values import nanos_to_usd

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


def table_line(row: Mapping[str, Any]) -> str:
    """One line of the text table: enough tokens to check the cost by hand."""
    cost = f"${row['cost_usd']:.6f}"
    where = row["uri"] or (row["error"] or "")
    return (
        f"{row['key'][:28]:<28} {row['status']:<10} {row['attempts']:>3} "
        f"{row['input_tokens']:>6} {row['output_image_tokens']:>6} {row['output_text_tokens']:>6} "
        f"{row['thinking_tokens']:>6} {cost:>10}  {where}"
    )


TABLE_HEADER = (
    f"{'key':<28} {'status':<10} {'try':>3} {'input':>6} {'image':>6} {'text':>6} "
    f"{'think':>6} {'cost':>10}  uri / error"
)
