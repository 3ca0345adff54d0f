"""Reference images as the pure core sees them (CONTRACT.md section 9): the `Ref` value, the
image kinds the service accepts, recognised by their first bytes, and the size limit.

Pure. Reading files and objects is `pipeline.adapters.references`' business; the core gets a
`RefLookup` that turns a cell into a `Ref` or the reason it cannot be one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

MAX_REFERENCE_BYTES: Final = 20 * 1024 * 1024
"""20 MiB: the largest reference image nanobatch sends."""
HEAD_BYTES: Final = 32
"""Enough of a file's start to tell its kind."""
KINDS: Final = "PNG, JPEG, WebP, HEIC or HEIF"

# ISO base media brands (bytes 8-12 of an `ftyp` box) of HEIC and HEIF stills.
_HEIC_BRANDS: Final = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_HEIF_BRANDS: Final = frozenset({b"mif1", b"msf1", b"heif"})


@dataclass(frozen=True)
class Ref:
    """One reference image: what identifies its bytes and where they are read from."""

    sha256: str
    """Hex sha256 of the bytes; "" while unchecked (a gs:// object at `plan`)."""
    mime: str
    """image/png, image/jpeg, image/webp, image/heic or image/heif ("" while unchecked)."""
    size: int
    source: str
    """An absolute local path or a gs://bucket/object uri."""


class RefLookup(Protocol):
    """A cell's reference image, or the reason (naming the path) it cannot be sent."""

    def __call__(self, cell: str) -> Ref | str: ...


def sniff_mime(head: bytes) -> str | None:
    """The image mime type the first bytes of a file announce, or None for any other kind."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        if brand in _HEIF_BRANDS:
            return "image/heif"
    return None


def too_large(size: int) -> str | None:
    """Why an image of `size` bytes is not sent, or None."""
    if size > MAX_REFERENCE_BYTES:
        return f"is {size:,} bytes, more than the 20 MiB ({MAX_REFERENCE_BYTES:,} bytes) limit"
    return None


def not_an_image() -> str:
    return f"is not a {KINDS} image (judged by its content, not its name)"


def reference_metadata(refs: str | None, seed: int | None) -> dict[str, str]:
    """Object metadata of an item's image: `nanobatch-references` (the sha256s, comma-separated,
    in order) and `nanobatch-seed`, for the items that have them."""
    found: dict[str, str] = {}
    if refs:
        found["nanobatch-references"] = refs
    if seed is not None:
        found["nanobatch-seed"] = str(seed)
    return found
