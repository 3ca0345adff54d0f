"""Rows to requests: validate each input row into an Item or a Reject, and build request lines.

Pure. Owns the row shape the core consumes (Row, UNDECODABLE; pipeline.inputs produces and
re-exports them). Rules (CONTRACT.md section 2): a key belongs to the first row that has it,
valid or not, and later rows with it are rejected as duplicates; a blank key, a blank prompt,
an empty or missing template value, text that does not decode and a bad per-row aspect ratio
or image size are rejected with a short reason naming the column. An empty per-row
`aspect_ratio` / `image_size` cell means the spec's value; per-row values are stripped of
surrounding spaces. For a model that takes no size, image_size is "" and is not sent.
Memory: the only state kept across rows is a dict of seen key -> first row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Final

from pipeline.catalog import ModelInfo
from pipeline.pricing import estimate_item_tokens
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
class Row:
    number: int
    """1-based data row, header not counted (CSV and Parquet alike)."""
    values: Mapping[str, Cell]
    """Only the requested columns: str, None (null or missing) or UNDECODABLE."""


@dataclass(frozen=True)
class Item:
    row: int
    key: str
    prompt: str
    aspect_ratio: str
    image_size: str
    """"" when the model takes no size."""
    est_tokens: int
    """Enqueued-token estimate (prompt + image tokens + thinking allowance)."""


@dataclass(frozen=True)
class Reject:
    row: int
    key: str
    """"" when the key itself is blank or undecodable."""
    reason: str


_Parts = tuple[tuple[str, str | None], ...]


class _Bad(Exception):
    """One row cannot become a request; the message is the reason."""


def _text(values: Mapping[str, Cell], column: str, encoding: str, what: str) -> str:
    """The cell as text; _Bad for an undecodable one; "" for empty or missing."""
    value = values.get(column)
    if value is UNDECODABLE:
        raise _Bad(f"{what} in column '{column}' does not decode as {encoding}")
    return value if isinstance(value, str) else ""


def _render(spec: JobSpec, parts: _Parts, row: Row) -> str:
    enc = spec.input.encoding
    if spec.input.prompt_column is not None:
        prompt = _text(row.values, spec.input.prompt_column, enc, "prompt")
    else:
        pieces: list[str] = []
        for literal, column in parts:
            pieces.append(literal)
            if column is not None:
                value = _text(row.values, column, enc, "template value")
                if not value.strip():
                    raise _Bad(f"empty value in column '{column}' for the prompt template")
                pieces.append(value)
        prompt = "".join(pieces)
    if not prompt.strip():
        raise _Bad("empty prompt")
    return prompt


def _override(row: Row, column: str, default: str, valid: tuple[str, ...], enc: str) -> str:
    value = _text(row.values, column, enc, column).strip()
    if not value:
        return default
    if value not in valid:
        raise _Bad(f"{column} '{value}' is not valid; valid: {', '.join(valid)}")
    return value


def _item(
    spec: JobSpec, info: ModelInfo, parts: _Parts, row: Row, key: str, flags: tuple[bool, bool]
) -> Item:
    has_ratio, has_size = flags
    enc = spec.input.encoding
    prompt = _render(spec, parts, row)
    ratio = spec.image.aspect_ratio
    if has_ratio:
        ratio = _override(row, RATIO_COLUMN, ratio, info.aspect_ratios, enc)
    size = spec.image.size if info.sizes else ""
    if has_size and info.sizes:
        size = _override(row, SIZE_COLUMN, size, info.sizes, enc)
    return Item(row.number, key, prompt, ratio, size, estimate_item_tokens(info, size, prompt))


def expand_rows(
    spec: JobSpec,
    info: ModelInfo,
    rows: Iterable[Row],
    *,
    has_ratio_column: bool,
    has_size_column: bool,
) -> Iterator[Item | Reject]:
    """Each row, in order, as an Item to send or a Reject with its reason."""
    parts: _Parts = () if spec.input.prompt is None else template_parts(spec.input.prompt)
    flags = (has_ratio_column, has_size_column)
    id_column, enc = spec.input.id_column, spec.input.encoding
    seen: dict[str, int] = {}
    for row in rows:
        try:
            key = _text(row.values, id_column, enc, "key")
        except _Bad as bad:
            yield Reject(row.number, "", str(bad))
            continue
        if not key.strip():
            yield Reject(row.number, key, f"empty key in column '{id_column}'")
            continue
        first = seen.setdefault(key, row.number)
        if first != row.number:
            yield Reject(row.number, key, f"duplicate key, first seen in row {first}")
            continue
        try:
            yield _item(spec, info, parts, row, key, flags)
        except _Bad as bad:
            yield Reject(row.number, key, str(bad))


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
