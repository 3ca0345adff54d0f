"""Rows to items: validate each input row of a block into an item or a Reject.

Pure. Rules (CONTRACT.md section 2): a key belongs to the first row that has it, valid or
not, and later rows with it are rejected as duplicates; a blank key, a blank prompt, an empty
or missing template value, text that does not decode and a bad per-row aspect ratio or image
size are rejected with a short reason naming the column. An empty per-row `aspect_ratio` /
`image_size` cell means the spec's value; per-row values are stripped of surrounding spaces.
For a model that takes no size, image_size is "" and is not sent. A block's accepted rows
leave as one `Items` (parallel lists, see `pipeline.core.table`). Memory: the only state kept
across blocks is a dict of seen key -> first row, limited to the keys that repeat when the
caller knows them (`repeated_keys`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Container, Iterable, Iterator, Sequence
from typing import Any, cast

from pipeline.core.catalog import ModelInfo
from pipeline.core.pricing import Estimator
from pipeline.core.refimage import Ref, RefLookup
from pipeline.core.spec import RATIO_COLUMN, SIZE_COLUMN, JobSpec, template_parts
from pipeline.core.table import (
    UNDECODABLE,
    Block,
    Cell,
    Expanded,
    Item,
    Items,
    Reject,
    row_keys,
    variant_base,
)

_Parts = tuple[tuple[str, str | None], ...]


class _Bad(Exception):
    """One row cannot become a request; the message is the reason."""


_Judged = list[str | _Bad]
"""A per-row value of a block: the text, or why the row is rejected."""


_Refs = tuple[Ref, ...]
_JudgedRefs = list[_Refs | _Bad]


class _Rules:
    """The row rules of one spec, applied a block at a time, column by column. State across
    blocks: the seen keys (key -> first row), the only memory that grows with the table;
    given the hashes of the keys that repeat, only those are kept."""

    def __init__(
        self,
        spec: JobSpec,
        info: ModelInfo,
        has_ratio: bool,
        has_size: bool,
        repeated: Container[int] | None,
        references: RefLookup | None,
    ) -> None:
        self.spec, self.info = spec, info
        self.enc = spec.input.encoding
        self.parts: _Parts = () if spec.input.prompt is None else template_parts(spec.input.prompt)
        self.has_ratio, self.has_size = has_ratio, has_size and bool(info.sizes)
        self.size = spec.image.size if info.sizes else ""
        self.estimate = Estimator(info)
        self.seen: dict[str, int] = {}
        self.repeated = repeated
        self.images = spec.input.images
        self.references = references
        self.variants = spec.input.variants

    def block(self, block: Block) -> Expanded:
        """Judge every row of the block: the per-row loop only tests, and the accepted rows'
        columns are taken from the block's lists (all of them when nothing is rejected)."""
        n = block.size
        keys = self._cells(block, self.spec.input.id_column)
        prompts = self._prompts(block)
        ratios = self._overrides(block, RATIO_COLUMN, self.spec.image.aspect_ratio, self.has_ratio)
        sizes = self._overrides(block, SIZE_COLUMN, self.size, self.has_size)
        refs = self._references(block)
        rejects: list[Reject] = []
        bad_rows = self._judge(block, keys, prompts, ratios, sizes, refs, rejects)
        if bad_rows:
            keep = [i for i in range(n) if i not in bad_rows]
            keys, prompts = [keys[i] for i in keep], [prompts[i] for i in keep]
            ratios, sizes = [ratios[i] for i in keep], [sizes[i] for i in keep]
            refs = [refs[i] for i in keep] if refs else refs
            rows = [block.first_row + i for i in keep]
        else:
            rows = list(range(block.first_row, block.first_row + n))
        # Every kept cell is text now (the judge rejected the rest).
        items = Items(
            rows,
            cast(Sequence[str], keys),
            cast(Sequence[str], prompts),
            cast(Sequence[str], ratios),
            cast(Sequence[str], sizes),
            [],
            (),
            cast(Sequence[_Refs], refs),
        )
        if self.variants > 1:
            items = self._variants(items)
        return Expanded(self._estimated(items), rejects)

    def _estimated(self, items: Items) -> Items:
        if items.refs:
            counts = [len(r) for r in items.refs]
            estimates = list(map(self.estimate, items.sizes, items.prompts, counts))
        else:
            estimates = list(map(self.estimate, items.sizes, items.prompts))
        return dataclasses.replace(items, estimates=estimates)

    def _variants(self, items: Items) -> Items:
        """Each row's N items: keys K.v1..K.vN, seeds 1..N, everything else the row's."""
        many = range(1, self.variants + 1)

        def spread(column: Sequence[Any]) -> list[Any]:
            return [value for value in column for _ in many]

        return Items(
            spread(items.rows),
            [f"{key}.v{n}" for key in items.keys for n in many],
            spread(items.prompts),
            spread(items.ratios),
            spread(items.sizes),
            [],
            [n for _ in items.keys for n in many],
            spread(items.refs) if items.refs else (),
        )

    def _judge(
        self,
        block: Block,
        keys: Sequence[Cell],
        prompts: _Judged,
        ratios: _Judged,
        sizes: _Judged,
        refs: _JudgedRefs,
        rejects: list[Reject],
    ) -> set[int]:
        """The block's rows that are rejected (their Rejects appended to `rejects`). The
        loop tests what a good row passes; a failing row is then explained by `_reason`."""
        bad: set[int] = set()
        repeated, claim = self.repeated, self._claim
        by_base = self._watched_base if self.variants > 1 else None
        number = block.first_row
        ref_cells = refs or itertools.repeat(())
        for i, (key, prompt, ratio, size, ref) in enumerate(
            zip(keys, prompts, ratios, sizes, ref_cells, strict=False)
        ):
            if (
                not isinstance(key, str)
                or not key.strip()
                or not isinstance(prompt, str)
                or not prompt.strip()
                or isinstance(ratio, _Bad)
                or isinstance(size, _Bad)
                or isinstance(ref, _Bad)
                or (
                    (
                        repeated is None
                        or hash(key) in repeated
                        or (by_base is not None and by_base(key))
                    )
                    and claim(key, number + i) != number + i
                )
            ):
                bad.add(i)
                rejects.append(self._reason(number + i, key, prompt, ratio, size, ref))
        return bad

    def _watched(self, key: str) -> bool:
        """Whether the key may be claimed by another row (so its claims must be remembered):
        every key without the pre-pass, else those whose hash (or, for a variant-like key
        `K.vn`, the hash of `K`) occurs more than once in the table (`repeated_key_hashes`)."""
        repeated = self.repeated
        return repeated is None or hash(key) in repeated or self._watched_base(key)

    def _watched_base(self, key: str) -> bool:
        base = variant_base(key, self.variants)
        return base is not None and self.repeated is not None and hash(base) in self.repeated

    def _claim(self, key: str, number: int) -> int:
        """Claim the row's keys for row `number`; the first row that already has one of them
        (then this row claims none), else `number`."""
        seen = self.seen
        if self.variants <= 1:
            return seen.setdefault(key, number)
        claimed = row_keys(key, self.variants)
        for name in claimed:
            first = seen.get(name)
            if first is not None and first != number:
                return first
        for name in claimed:
            seen[name] = number
        return number

    def _reason(self, number: int, cell: Cell, prompt: Cell | _Bad, *more: object) -> Reject:
        """Why row `number` is rejected, in the rules' order: key, duplicate, prompt, ratio,
        size, references. A key seen first here is remembered (it belongs to this row, valid
        or not)."""
        id_column = self.spec.input.id_column
        if cell is UNDECODABLE:
            return Reject(number, "", f"key in column '{id_column}' does not decode as {self.enc}")
        key = cell if isinstance(cell, str) else ""
        if not key.strip():
            return Reject(number, key, f"empty key in column '{id_column}'")
        first = number
        if self._watched(key):
            first = self._claim(key, number)
        if first != number:
            if self.variants > 1:
                return Reject(number, key, f"duplicate key: a key of this row is row {first}'s")
            return Reject(number, key, f"duplicate key, first seen in row {first}")
        if isinstance(prompt, _Bad):
            return Reject(number, key, str(prompt))
        if not isinstance(prompt, str) or not prompt.strip():
            return Reject(number, key, "empty prompt")
        bad = next(value for value in more if isinstance(value, _Bad))
        return Reject(number, key, str(bad))

    def _references(self, block: Block) -> _JudgedRefs:
        """Each row's reference images in column order (empty cells skipped), or why the row
        cannot be sent; [] when the spec names no image columns. Rows with the same cells
        share one answer (and one tuple): tables repeat a few images over many rows."""
        if not self.images:
            return []
        columns = [self._cells(block, name) for name in self.images]
        memo: dict[tuple[Cell, ...], _Refs | _Bad] = {}
        out: _JudgedRefs = []
        for cells in zip(*columns, strict=True):
            found = memo.get(cells)
            if found is None:
                found = memo[cells] = self._row_references(cells)
            out.append(found)
        return out

    def _row_references(self, cells: tuple[Cell, ...]) -> _Refs | _Bad:
        lookup = self.references
        assert lookup is not None, "a spec with [input] images needs a reference lookup"
        found: list[Ref] = []
        for name, cell in zip(self.images, cells, strict=True):
            if cell is UNDECODABLE:
                return _Bad(f"reference image in column '{name}' does not decode")
            text = cell.strip() if isinstance(cell, str) else ""
            if not text:
                continue
            ref = lookup(text)
            if isinstance(ref, str):
                return _Bad(f"reference image in column '{name}': {ref}")
            found.append(ref)
        limit, model = self.info.max_reference_images, self.info.name
        if len(found) > limit:
            return _Bad(
                f"{len(found)} reference images, more than the {limit} {model} accepts "
                "(pipeline/data/models.toml)"
            )
        return tuple(found)

    @staticmethod
    def _cells(block: Block, column: str) -> Sequence[Cell]:
        found = block.columns.get(column)
        return found if found is not None else [None] * block.size

    def _text(self, value: Cell, column: str, what: str) -> str | _Bad:
        """A cell as text: a _Bad for an undecodable one; "" for empty or missing."""
        if value is UNDECODABLE:
            return _Bad(f"{what} in column '{column}' does not decode as {self.enc}")
        return value if isinstance(value, str) else ""

    def _prompts(self, block: Block) -> _Judged:
        """Each row's prompt: from its column or the template; a _Bad for an undecodable or
        empty template value ("" and blank prompts are judged as empty later)."""
        column = self.spec.input.prompt_column
        if column is not None:
            cells = self._cells(block, column)
            if all(type(c) is str for c in cells):
                return cast(_Judged, cells)
            return [self._text(c, column, "prompt") for c in cells]
        names = [name for _, name in self.parts if name is not None]
        columns = [self._cells(block, name) for name in names]
        return (
            [self._render(values, names) for values in zip(*columns, strict=True)]
            if columns
            else ["".join(literal for literal, _ in self.parts)] * block.size
        )

    def _render(self, values: tuple[Cell, ...], names: list[str]) -> str | _Bad:
        pieces: list[str] = []
        fields = iter(zip(values, names, strict=True))
        for literal, name in self.parts:
            pieces.append(literal)
            if name is not None:
                value, column = next(fields)
                text = self._text(value, column, "template value")
                if isinstance(text, _Bad):
                    return text
                if not text.strip():
                    return _Bad(f"empty value in column '{column}' for the prompt template")
                pieces.append(text)
        return "".join(pieces)

    def _overrides(self, block: Block, column: str, default: str, present: bool) -> _Judged:
        """Each row's aspect ratio or image size: the spec's unless the row's own cell (when
        the table has the column) says otherwise; a _Bad for a value the model refuses."""
        if not present:
            return [default] * block.size
        valid = self.info.aspect_ratios if column == RATIO_COLUMN else self.info.sizes
        return [self._override(cell, column, default, valid) for cell in self._cells(block, column)]

    def _override(
        self, cell: Cell, column: str, default: str, valid: tuple[str, ...]
    ) -> str | _Bad:
        text = self._text(cell, column, column)
        if isinstance(text, _Bad):
            return text
        value = text.strip()
        if not value:
            return default
        if value not in valid:
            # A size the model makes but this channel's batch does not serve names the limit.
            limit = (
                f" ({self.info.size_limit})"
                if column == SIZE_COLUMN and self.info.size_limit
                else ""
            )
            return _Bad(f"{column} '{value}' is not valid{limit}; valid: {', '.join(valid)}")
        return value


def expand_columns(
    spec: JobSpec,
    info: ModelInfo,
    blocks: Iterable[Block],
    *,
    has_ratio_column: bool,
    has_size_column: bool,
    repeated_keys: Container[int] | None = None,
    references: RefLookup | None = None,
) -> Iterator[Expanded]:
    """Each block's items (column by column) and rejects with their reasons.

    `repeated_keys`, when given, holds hash() of every key that occurs more than once in the
    table (a superset is fine; see `repeated_key_hashes` for variants): only those keys are
    remembered to find duplicates. `references` reads the spec's reference image cells."""
    rules = _Rules(spec, info, has_ratio_column, has_size_column, repeated_keys, references)
    for block in blocks:
        yield rules.block(block)


def in_row_order(blocks: Iterable[Expanded]) -> Iterator[Item | Reject]:
    """Expanded blocks row by row: each row, in order, as an Item or a Reject."""
    for out in blocks:
        entries: list[Item | Reject] = [out.items.item(i) for i in range(len(out.items))]
        entries += out.rejects
        yield from sorted(entries, key=lambda entry: entry.row)
