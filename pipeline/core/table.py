"""The table shape the core consumes and the items it yields: cells, blocks, items, rejects.

Pure. Rows come in column blocks (`Block`, one per pyarrow record batch; pipeline.adapters.
inputs produces and re-exports it) and leave the same way: a block's items are parallel lists
(`Items`), its rejects a list, so a million rows build no object per row (`Item` is the row
view, for tests and callers that want one). The row rules are `pipeline.core.rows`; request
lines and prompt hashes are `pipeline.core.expand`. Also the variant key scheme (`K.v1`..).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pipeline.core.pricing import Estimate
from pipeline.core.refimage import Ref


class _Undecodable:
    """A cell whose bytes do not decode with the table's encoding (a singleton)."""

    _instance: _Undecodable | None = None

    def __new__(cls) -> _Undecodable:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDECODABLE"

    def __reduce__(self) -> str:
        return "UNDECODABLE"


UNDECODABLE: Final = _Undecodable()
"""The value of a cell whose bytes do not decode with the table's encoding."""

Cell = str | None | _Undecodable


@dataclass(frozen=True)
class Block:
    """Consecutive rows of the table, column by column (what pyarrow reads at once)."""

    first_row: int
    """1-based number of the block's first data row, header not counted (CSV and Parquet)."""
    size: int
    columns: Mapping[str, Sequence[Cell]]
    """Only the requested columns present in the table: str, None (null) or UNDECODABLE."""


@dataclass(frozen=True)
class Item:
    row: int
    key: str
    prompt: str
    aspect_ratio: str
    image_size: str
    """"" when the model takes no size."""
    estimate: Estimate
    """Enqueued tokens (prompt + image tokens + thinking allowance) and estimated cost."""
    seed: int | None = None
    """generationConfig.seed: variant n of its row (None without variants)."""
    refs: tuple[Ref, ...] = ()
    """Reference images, in the order they are sent."""

    @property
    def est_tokens(self) -> int:
        return self.estimate.tokens


@dataclass(frozen=True)
class Reject:
    row: int
    key: str
    """"" when the key itself is blank or undecodable."""
    reason: str


@dataclass(frozen=True)
class Items:
    """A block's items column by column: parallel lists in input order. The form recording
    and planning consume; `item(i)` is row i as an `Item`."""

    rows: Sequence[int]
    keys: Sequence[str]
    prompts: Sequence[str]
    ratios: Sequence[str]
    sizes: Sequence[str]
    """"" when the model takes no size."""
    estimates: Sequence[Estimate]
    seeds: Sequence[int | None] = ()
    """Each item's seed; empty when no item has one (no variants)."""
    refs: Sequence[tuple[Ref, ...]] = ()
    """Each item's reference images; empty when no item has any."""

    def __len__(self) -> int:
        return len(self.rows)

    def tokens(self) -> list[int]:
        """Enqueued-token estimate of each item."""
        return [e.tokens for e in self.estimates]

    def slice(self, start: int, stop: int) -> Items:
        return Items(*(column[start:stop] for column in self._columns()))

    def pick(self, indexes: Sequence[int]) -> Items:
        """The items at `indexes`, in that order."""
        return Items(
            *([column[i] for i in indexes] if column else column for column in self._columns())
        )

    def _columns(self) -> tuple[Sequence[Any], ...]:
        return (
            self.rows,
            self.keys,
            self.prompts,
            self.ratios,
            self.sizes,
            self.estimates,
            self.seeds,
            self.refs,
        )

    def item(self, i: int) -> Item:
        return Item(
            self.rows[i],
            self.keys[i],
            self.prompts[i],
            self.ratios[i],
            self.sizes[i],
            self.estimates[i],
            self.seeds[i] if self.seeds else None,
            self.refs[i] if self.refs else (),
        )

    def ref_text(self) -> list[str | None]:
        """Each item's reference sha256s as the ledger keeps them (comma-separated, in order;
        None for none)."""
        if not self.refs:
            return [None] * len(self.rows)
        return [",".join(r.sha256 for r in refs) or None for refs in self.refs]


@dataclass(frozen=True)
class Expanded:
    """One block's outcome: its items and its rejects (each in row order)."""

    items: Items
    rejects: list[Reject]


def variant_base(key: str, variants: int) -> str | None:
    """The row key whose variant `key` would be (`K` of `K.vn`, n <= variants), or None."""
    if variants > 1 and len(key) > 3 and key[-3:-1] == ".v" and "1" <= key[-1] <= str(variants):
        return key[:-3]
    return None


def row_keys(key: str, variants: int) -> tuple[str, ...]:
    """The keys a row claims: its own, and with variants `K.v1`..`K.vN` too."""
    if variants <= 1:
        return (key,)
    return (key, *(f"{key}.v{n}" for n in range(1, variants + 1)))
