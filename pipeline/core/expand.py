"""Items to requests: each item's JSONL request line and its prompt-cache hash.

Pure. Both are built from templates with only the strings encoded, the fixed parts once per
(ratio, size) or per distinct tuple of reference images: they run once per item at a million
rows. The items come from `pipeline.core.rows` (column by column, `pipeline.core.table.Items`).
Also the imageSize a model is sent (`effective_size`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from typing import Final

from pipeline.core.catalog import ModelInfo
from pipeline.core.refimage import Ref
from pipeline.core.table import Items

_json_str = encode_basestring
"""json.dumps(s, ensure_ascii=False) of one str, without the encoder's set-up."""

PROMPT_HASH_VERSION: Final = "v1"


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
