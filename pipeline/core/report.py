"""The per-image account (CONTRACT section 5) and `status`'s values, built from ledger rows:
item rows (one at a time, or column-wise for a chunk of items), the run's summary, the text
table's lines, the manifest's extra columns, and the held-run lines. Pure: the shell streams
ledger rows in and `adapters.writers` writes what comes out in each file format.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.core.catalog import Catalog
from pipeline.core.expand import effective_size
from pipeline.core.values import as_utc, nanos_to_usd

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


Columns = Mapping[str, Sequence[Any]]
"""A chunk of rows column-wise: {column name: values, one per row}."""


def item_columns(chunk: Columns) -> dict[str, Sequence[Any]]:
    """The report's columns (ITEM_FIELDS) of a chunk of items with their attempt sums, as
    `repo.report_columns` gives them: what `item_row` makes of each, a column at a time."""
    states = chunk["state"]
    return {
        "key": chunk["key"],
        "status": [_STATUS.get(state, state) for state in states],
        "attempts": chunk["attempts"],
        "model": [
            served or model
            for served, model in zip(chunk["served_by"], chunk["model"], strict=True)
        ],
        "uri": chunk["uri"],
        "sha256": chunk["sha256"],
        "input_tokens": chunk["input_tokens"],
        "output_image_tokens": chunk["output_image_tokens"],
        "output_text_tokens": chunk["output_text_tokens"],
        "thinking_tokens": chunk["thinking_tokens"],
        "cost_usd": list(map(nanos_to_usd, chunk["cost_nanos"])),
        "cached": list(map(bool, chunk["cached"])),
        "error": [
            None if state == "succeeded" else error
            for state, error in zip(states, chunk["error"], strict=True)
        ],
        "references": [refs.split(",") if refs else [] for refs in chunk["refs"]],
        "seed": chunk["seed"],
        "duplicates": chunk["duplicates"],
    }


def manifest_columns(
    chunk: Columns, columns: Mapping[str, Sequence[Any]], catalog: Catalog
) -> dict[str, Sequence[Any]]:
    """The manifest's columns beside the report's: prompt, aspect_ratio, and the size the
    model that made each image was asked for."""
    sizes: dict[tuple[str, str], str] = {}

    def sent(model: str, size: str) -> str:
        if (model, size) not in sizes:
            sizes[model, size] = size_sent(catalog, model, size)
        return sizes[model, size]

    return {
        **columns,
        "prompt": chunk["prompt"],
        "aspect_ratio": chunk["aspect_ratio"],
        "image_size": [
            sent(model, size)
            for model, size in zip(columns["model"], chunk["image_size"], strict=True)
        ],
    }


def size_sent(catalog: Catalog, model: str, size: str) -> str:
    """The size the model that made the image was asked for: a fallback model may take none
    ("") or not the primary's."""
    try:
        return effective_size(catalog.get(model), size)
    except KeyError:  # a model no longer in the catalog: what the item asked for
        return size


def rows_of(
    columns: Mapping[str, Sequence[Any]], names: Sequence[str] = ITEM_FIELDS
) -> Iterator[dict[str, Any]]:
    """The rows of a column chunk as dicts with the keys `names`, in that order."""
    for values in zip(*(columns[name] for name in names), strict=True):
        yield dict(zip(names, values, strict=True))


def columns_and_summary(chunks: Iterable[Columns], summary: Summary) -> Iterator[dict[str, Any]]:
    """The report's column chunks from `repo.report_columns` chunks, adding each into
    `summary` as it passes."""
    for chunk in chunks:
        columns = item_columns(chunk)
        summary.add_columns(columns, chunk)
        yield columns


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

    def add_columns(self, columns: Columns, sums: Columns) -> None:
        """`add` for a chunk of rows: `columns` as `item_columns` gives, `sums` as
        `repo.report_columns` does."""
        self.items += len(columns["key"])
        counts = Counter(columns["status"])
        for status in ("succeeded", "failed", "pending", "cancelled"):
            setattr(self, status, getattr(self, status) + counts[status])
        self.cached += sum(columns["cached"])
        self.cost_nanos += sum(sums["cost_nanos"])
        self.standard_nanos += sum(sums["standard_nanos"])
        self.duplicates += sum(sums["duplicates"])
        for name in self.tokens:
            self.tokens[name] += sum(sums[f"{name}_tokens"])

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


def table_footer(s: Mapping[str, Any]) -> str:
    """The table's closing lines from `Summary.asdict()`: counts, cost and tokens, cache."""
    text = (
        f"\n{s['items']} items: {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['pending']} pending, {s['cancelled']} cancelled, {s['rejected']} rejected rows\n"
        f"cost ${s['cost_usd']:.4f} at batch price (standard price would be "
        f"${s['standard_cost_usd']:.4f}); tokens {s['tokens']}\n"
    )
    if s["cached"]:
        text += (
            f"{s['cached']} served from the prompt cache, saving ${s['saved_by_cache_usd']:.4f}\n"
        )
    return text


def rates_note(catalog: Catalog, models: Iterable[str | None]) -> str:
    """The batch rates the costs were computed at, so a reader can check them."""
    lines = ["batch price per 1M tokens (image = IMAGE output, text and thinking at one rate):"]
    for name in dict.fromkeys(m for m in models if m):
        r = catalog.get(name).batch
        lines.append(
            f"  {name}: input ${r.input}, image ${r.image_output}, text/thinking ${r.text_output}"
        )
    return "\n".join(lines) + "\n"


# ── status ───────────────────────────────────────────────────────────────────


def status_items(counts: Mapping[str, int], rejected: int) -> dict[str, int]:
    """`status --json`'s `items` from the item counts by state (failed_final apart)."""
    return {
        "pending": counts.get("queued", 0) + counts.get("in_batch", 0),
        "succeeded": counts.get("succeeded", 0),
        "failed": counts.get("failed", 0) + counts.get("failed_final", 0),
        "failed_final": counts.get("failed_final", 0),
        "cancelled": counts.get("cancelled", 0),
        "rejected": rejected,
    }


def held_entry(run: Any) -> dict[str, Any] | None:
    """`status --json`'s `held`: why an active run is held, since when, and its next try."""
    if run.state != "active" or run.hold_reason is None:
        return None
    return {
        "reason": run.hold_reason,
        "detail": run.hold_detail,
        "since": iso(run.hold_since),
        "retry_at": iso(run.hold_not_before),
        "tries": run.hold_tries,
    }


def held_line(run: Any, now: datetime) -> str:
    """`status`'s one `waiting` line for a held run: its problem and when it is retried."""
    until = run.hold_not_before
    if until is None or as_utc(until) <= now:
        when = "retrying at the next tick"
    else:
        when = f"retrying after {as_utc(until):%Y-%m-%d %H:%M:%S} UTC"
    tries = f"{run.hold_tries} failed {'try' if run.hold_tries == 1 else 'tries'}"
    return (
        f"held ({run.hold_reason}): {run.hold_detail}; {when} ({tries}; "
        f"`nanobatch cancel {run.id}` ends the run)"
    )


def iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
