"""Rows to requests: validate each input row into an Item or a Reject, and build request lines.

Pure. Owns the table shape the core consumes (Block, UNDECODABLE; pipeline.inputs produces and
re-exports them). Rules (CONTRACT.md section 2): a key belongs to the first row that has it,
valid or not, and later rows with it are rejected as duplicates; a blank key, a blank prompt,
an empty or missing template value, text that does not decode and a bad per-row aspect ratio
or image size are rejected with a short reason naming the column. An empty per-row
`aspect_ratio` / `image_size` cell means the spec's value; per-row values are stripped of
surrounding spaces. For a model that takes no size, image_size is "" and is not sent.
Rows come in column blocks (one per pyarrow record batch), so no object is built per row
before it is judged. Memory: the only state kept across blocks is a dict of seen key -> first
row, limited to the keys that repeat when the caller knows them (`repeated_keys`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Final

from pipeline.catalog import ModelInfo
from pipeline.pricing import Estimate, Estimator
from pipeline.spec import RATIO_COLUMN, SIZE_COLUMN, JobSpec, template_parts

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

    @property
    def est_tokens(self) -> int:
        return self.estimate.tokens


@dataclass(frozen=True)
class Reject:
    row: int
    key: str
    """"" when the key itself is blank or undecodable."""
    reason: str


_Parts = tuple[tuple[str, str | None], ...]


class _Bad(Exception):
    """One row cannot become a request; the message is the reason."""


class _Rules:
    """The row rules of one spec, applied a block at a time. State across blocks: the seen
    keys (key -> first row), the only memory that grows with the table; given the hashes of
    the keys that repeat, only those are kept."""

    def __init__(
        self,
        spec: JobSpec,
        info: ModelInfo,
        has_ratio: bool,
        has_size: bool,
        repeated: Container[int] | None,
    ) -> None:
        self.spec, self.info = spec, info
        self.enc = spec.input.encoding
        self.parts: _Parts = () if spec.input.prompt is None else template_parts(spec.input.prompt)
        self.has_ratio, self.has_size = has_ratio, has_size and bool(info.sizes)
        self.size = spec.image.size if info.sizes else ""
        self.estimate = Estimator(info)
        self.seen: dict[str, int] = {}
        self.repeated = repeated

    def block(self, block: Block) -> Iterator[Item | Reject]:
        id_column = self.spec.input.id_column
        keys = self._column(block, id_column)
        for i in range(block.size):
            number = block.first_row + i
            cell = keys[i]
            if cell is UNDECODABLE:
                yield Reject(
                    number, "", f"key in column '{id_column}' does not decode as {self.enc}"
                )
                continue
            key = cell if isinstance(cell, str) else ""
            if not key.strip():
                yield Reject(number, key, f"empty key in column '{id_column}'")
                continue
            repeated = self.repeated
            first = (
                number
                if repeated is not None and hash(key) not in repeated
                else self.seen.setdefault(key, number)
            )
            if first != number:
                yield Reject(number, key, f"duplicate key, first seen in row {first}")
                continue
            try:
                yield self._item(block, i, number, key)
            except _Bad as bad:
                yield Reject(number, key, str(bad))

    @staticmethod
    def _column(block: Block, column: str) -> Sequence[Cell]:
        found = block.columns.get(column)
        return found if found is not None else [None] * block.size

    def _text(self, block: Block, column: str, i: int, what: str) -> str:
        """The cell as text; _Bad for an undecodable one; "" for empty or missing."""
        column_cells = block.columns.get(column)
        value = column_cells[i] if column_cells is not None else None
        if value is UNDECODABLE:
            raise _Bad(f"{what} in column '{column}' does not decode as {self.enc}")
        return value if isinstance(value, str) else ""

    def _item(self, block: Block, i: int, number: int, key: str) -> Item:
        prompt = self._render(block, i)
        ratio = self.spec.image.aspect_ratio
        if self.has_ratio:
            ratio = self._override(block, i, RATIO_COLUMN, ratio, self.info.aspect_ratios)
        size = self.size
        if self.has_size:
            size = self._override(block, i, SIZE_COLUMN, size, self.info.sizes)
        return Item(number, key, prompt, ratio, size, self.estimate(size, prompt))

    def _render(self, block: Block, i: int) -> str:
        column = self.spec.input.prompt_column
        if column is not None:
            prompt = self._text(block, column, i, "prompt")
        else:
            pieces: list[str] = []
            for literal, name in self.parts:
                pieces.append(literal)
                if name is not None:
                    value = self._text(block, name, i, "template value")
                    if not value.strip():
                        raise _Bad(f"empty value in column '{name}' for the prompt template")
                    pieces.append(value)
            prompt = "".join(pieces)
        if not prompt.strip():
            raise _Bad("empty prompt")
        return prompt

    def _override(
        self, block: Block, i: int, column: str, default: str, valid: tuple[str, ...]
    ) -> str:
        value = self._text(block, column, i, column).strip()
        if not value:
            return default
        if value not in valid:
            raise _Bad(f"{column} '{value}' is not valid; valid: {', '.join(valid)}")
        return value


def expand_blocks(
    spec: JobSpec,
    info: ModelInfo,
    blocks: Iterable[Block],
    *,
    has_ratio_column: bool,
    has_size_column: bool,
    repeated_keys: Container[int] | None = None,
) -> Iterator[Item | Reject]:
    """Each row, in order, as an Item to send or a Reject with its reason.

    `repeated_keys`, when given, holds hash() of every key that occurs more than once in the
    table (a superset is fine): only those keys are remembered to find duplicates."""
    rules = _Rules(spec, info, has_ratio_column, has_size_column, repeated_keys)
    for block in blocks:
        yield from rules.block(block)


def effective_size(info: ModelInfo, size: str) -> str:
    """The imageSize to send to `info` (e.g. a fallback model): "" if it takes none, `size` if
    it accepts it, else its default size."""
    if not info.sizes:
        return ""
    if size in info.sizes:
        return size
    return info.default_size or info.sizes[0]


def request_line(key: str, prompt: str, aspect_ratio: str, image_size: str) -> bytes:
    """One JSONL request line ending in b"\\n"; imageSize omitted when image_size is "".

    The same bytes as json.dumps(..., ensure_ascii=False, separators=(",", ":")) of the nested
    request, built from a template (only the four strings are encoded): it runs once per item
    in plan, form_batches and upload."""
    size = f',"imageSize":{_json_str(image_size)}' if image_size else ""
    return (
        f'{{"key":{_json_str(key)},"request":{{"contents":[{{"role":"user","parts":'
        f'[{{"text":{_json_str(prompt)}}}]}}],"generationConfig":{{"responseModalities":'
        f'["IMAGE"],"imageConfig":{{"aspectRatio":{_json_str(aspect_ratio)}{size}}}}}}}}}\n'
    ).encode()


def prompt_sha256(model: str, prompt: str, aspect_ratio: str, image_size: str) -> str:
    """Hex sha256 of the canonical request content, for the prompt cache (versioned "v1:")."""
    # json.dumps([...], ensure_ascii=False), string by string.
    body = "[" + ", ".join(map(_json_str, (model, prompt, aspect_ratio, image_size))) + "]"
    return hashlib.sha256(f"{PROMPT_HASH_VERSION}:{body}".encode()).hexdigest()
