"""Rows to requests: validate each input row into an Item or a Reject, and build request lines.

Pure. Owns the table shape the core consumes (Block, UNDECODABLE; pipeline.adapters.inputs
produces and re-exports them). Rules (CONTRACT.md section 2): a key belongs to the first row
that has it, valid or not, and later rows with it are rejected as duplicates; a blank key, a
blank prompt, an empty or missing template value, text that does not decode and a bad per-
row aspect ratio or image size are rejected with a short reason naming the column. An empty
per-row `aspect_ratio` / `image_size` cell means the spec's value; per-row values are
stripped of surrounding spaces. For a model that takes no size, image_size is "" and is not
sent. Rows come in column blocks (one per pyarrow record batch) and leave the same way: a
block's items are parallel lists (`Items`), its rejects a list, so a million rows build no
object per row (`Item` is the row view, for tests and callers that want one). Memory: the
only state kept across blocks is a dict of seen key -> first row, limited to the keys that
repeat when the caller knows them (`repeated_keys`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Final, cast

from pipeline.core.catalog import ModelInfo
from pipeline.core.pricing import Estimate, Estimator
from pipeline.core.refimage import Ref, RefLookup
from pipeline.core.spec import RATIO_COLUMN, SIZE_COLUMN, JobSpec, template_parts

_json_str = encode_basestring
"""json.dumps(s, ensure_ascii=False) of one str, without the encoder's set-up."""

PROMPT_HASH_VERSION: Final = "v1"


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


_Parts = tuple[tuple[str, str | None], ...]


class _Bad(Exception):
    """One row cannot become a request; the message is the reason."""


_Judged = list[str | _Bad]
"""A per-row value of a block: the text, or why the row is rejected."""


_Refs = tuple[Ref, ...]
_JudgedRefs = list[_Refs | _Bad]


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


def effective_size(info: ModelInfo, size: str) -> str:
    """The imageSize to send to `info` (e.g. a fallback model): "" if it takes none, `size` if
    it accepts it, else its default size."""
    if not info.sizes:
        return ""
    if size in info.sizes:
        return size
    return info.default_size or info.sizes[0]


_LINE_HEAD = '{"key":'
_LINE_MID = ',"request":{"contents":[{"role":"user","parts":[{"text":'
_LINE_PARTS = ',"request":{"contents":[{"role":"user","parts":['
PLACEHOLDER_URI = "https://generativelanguage.googleapis.com/v1beta/files/" + "x" * 40
"""The longest Files API uri a line may carry: packing measures lines before the uploads."""

FileOf = Callable[[Ref], tuple[str, str]]
"""(mime type, file uri) a reference image is sent as."""


def _line_tail(aspect_ratio: str, image_size: str, seed: int | None = None) -> str:
    size = f',"imageSize":{_json_str(image_size)}' if image_size else ""
    seeded = f',"seed":{int(seed)}' if seed is not None else ""
    return (
        '}]}],"generationConfig":{"responseModalities":["IMAGE"],"imageConfig":'
        f'{{"aspectRatio":{_json_str(aspect_ratio)}{size}}}{seeded}}}}}}}\n'
    )


def _file_parts(files: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f'{{"fileData":{{"mimeType":{_json_str(mime)},"fileUri":{_json_str(uri)}}}}},'
        for mime, uri in files
    )


def request_line(
    key: str,
    prompt: str,
    aspect_ratio: str,
    image_size: str,
    files: Sequence[tuple[str, str]] = (),
    seed: int | None = None,
) -> bytes:
    """One JSONL request line ending in b"\\n"; imageSize omitted when image_size is "".
    `files` are the reference images as (mime type, file uri), sent as fileData parts before
    the prompt text, in order; `seed` goes to generationConfig.seed.

    The same bytes as json.dumps(..., ensure_ascii=False, separators=(",", ":")) of the nested
    request, built from a template (only the strings are encoded): it runs once per item
    in form_batches and upload."""
    mid = f'{_LINE_PARTS}{_file_parts(files)}{{"text":' if files else _LINE_MID
    return (
        f"{_LINE_HEAD}{_json_str(key)}{mid}{_json_str(prompt)}"
        f"{_line_tail(aspect_ratio, image_size, seed)}"
    ).encode()


def request_lines(items: Items, file_of: FileOf | None = None) -> list[bytes]:
    """`request_line` of each item: the template's tail is built once per (ratio, size).
    Items with reference images or seeds take `file_of` for each image (a placeholder uri
    of the longest length when None: the lines are then only measured)."""
    if items.refs or items.seeds:
        return _rich_lines(items, file_of or _placeholder)
    tails = _per_pair(items, _line_tail)
    return [
        f"{_LINE_HEAD}{_json_str(key)}{_LINE_MID}{_json_str(prompt)}{tail}".encode()
        for key, prompt, tail in zip(items.keys, items.prompts, tails, strict=True)
    ]


def line_lengths(items: Items) -> list[int]:
    """The byte length of each item's request line, its reference images sent with the
    longest file uri: what packing measures before the images are uploaded. Counted, not
    built, for the images (a part's length depends only on its mime type)."""
    if not items.refs:
        return list(map(len, request_lines(items)))
    base = map(len, request_lines(dataclasses.replace(items, refs=())))
    extra: dict[str, int] = {}
    for refs in items.refs:
        for ref in refs:
            if ref.mime not in extra:
                extra[ref.mime] = len(_file_parts([_placeholder(ref)]).encode())
    # A line with images is the same line with their parts inserted before the text part.
    return [
        n + sum(extra[r.mime] for r in refs) if refs else n
        for n, refs in zip(base, items.refs, strict=True)
    ]


def _placeholder(ref: Ref) -> tuple[str, str]:
    return ref.mime or "image/jpeg", PLACEHOLDER_URI


def _rich_lines(items: Items, file_of: FileOf) -> list[bytes]:
    """Lines of items with seeds or reference images: the tail built once per (ratio, size,
    seed), the file parts once per distinct tuple of images."""
    seeds = items.seeds or itertools.repeat(None)
    refs = items.refs or itertools.repeat(())
    tails: dict[tuple[str, str, int | None], str] = {}
    mids: dict[tuple[Ref, ...], str] = {(): _LINE_MID}
    out = []
    for key, prompt, ratio, size, seed, item_refs in zip(
        items.keys, items.prompts, items.ratios, items.sizes, seeds, refs, strict=False
    ):
        tail = tails.get((ratio, size, seed))
        if tail is None:
            tail = tails[(ratio, size, seed)] = _line_tail(ratio, size, seed)
        mid = mids.get(item_refs)
        if mid is None:
            parts = _file_parts([file_of(r) for r in item_refs])
            mid = mids[item_refs] = f'{_LINE_PARTS}{parts}{{"text":'
        out.append(f"{_LINE_HEAD}{_json_str(key)}{mid}{_json_str(prompt)}{tail}".encode())
    return out


def _per_pair(items: Items, build: Callable[[str, str], str]) -> Sequence[str]:
    """build(ratio, size) for each item, called once per distinct pair."""
    ratios, sizes = items.ratios, items.sizes
    if len(set(ratios)) <= 1 and len(set(sizes)) <= 1:
        return [build(ratios[0], sizes[0])] * len(ratios) if ratios else []
    memo: dict[tuple[str, str], str] = {}
    out = []
    for pair in zip(ratios, sizes, strict=True):
        found = memo.get(pair)
        if found is None:
            found = memo[pair] = build(*pair)
        out.append(found)
    return out


def prompt_sha256(
    model: str,
    prompt: str,
    aspect_ratio: str,
    image_size: str,
    seed: int | None = None,
    references: Sequence[str] = (),
) -> str:
    """Hex sha256 of the canonical request content, for the prompt cache (versioned "v1:"):
    model, prompt, ratio, size and, when there are any, the seed and the reference images'
    sha256s in order."""
    tail = _hash_tail(aspect_ratio, image_size) + _hash_more(seed, references)
    return _hash_hex(_hash_head(model), prompt, tail + "]")


def prompt_hashes(model: str, items: Items) -> list[str]:
    """`prompt_sha256` of each item, the fixed parts of the hashed text built once."""
    head = _hash_head(model)
    tails = _per_pair(items, _hash_tail)
    if items.refs or items.seeds:
        seeds = items.seeds or itertools.repeat(None)
        refs = items.refs or itertools.repeat(())
        return [
            _hash_hex(head, p, t + _hash_more(seed, [r.sha256 for r in rs]) + "]")
            for p, t, seed, rs in zip(items.prompts, tails, seeds, refs, strict=False)
        ]
    return [_hash_hex(head, p, t + "]") for p, t in zip(items.prompts, tails, strict=True)]


# The hashed text is json.dumps([model, prompt, ratio, size], ensure_ascii=False), string by
# string: changing it would change every hash (PROMPT_HASH_VERSION says which form). Items with
# a seed or reference images add them as two more elements, [..., seed or null, [sha256...]],
# so an item without either keeps the hash it always had.
def _hash_head(model: str) -> str:
    return f"{PROMPT_HASH_VERSION}:[{_json_str(model)}, "


def _hash_tail(aspect_ratio: str, image_size: str) -> str:
    return f", {_json_str(aspect_ratio)}, {_json_str(image_size)}"


def _hash_more(seed: int | None, references: Sequence[str]) -> str:
    if seed is None and not references:
        return ""
    shas = ", ".join(_json_str(sha) for sha in references)
    return f", {'null' if seed is None else int(seed)}, [{shas}]"


def _hash_hex(head: str, prompt: str, tail: str) -> str:
    return hashlib.sha256(f"{head}{_json_str(prompt)}{tail}".encode()).hexdigest()
