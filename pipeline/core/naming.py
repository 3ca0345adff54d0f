"""Object names for stored images: item key + mime type -> a safe file or object name.

Owns CONTRACT section 6's naming rule. Pure: no I/O, nothing but the standard library.
A name depends only on the item key and the image's mime type, so a replayed harvest
targets the same object.
"""

from __future__ import annotations

import hashlib
import re

MAX_PLAIN_KEY = 200
"""Longest key that is used as the name unchanged."""

SANITISED_PREFIX = 100
"""How many characters of a sanitised key are kept before the hash suffix."""

HASH_DIGITS = 12
"""Hex digits of sha256(key) appended to a sanitised key."""

_SAFE_KEY = re.compile(r"[A-Za-z0-9._-]{1,200}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_KNOWN_EXT = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/pjpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/heic": "heic",
    "image/heif": "heif",
    "image/avif": "avif",
    "image/tiff": "tiff",
    "image/bmp": "bmp",
    "image/svg+xml": "svg",
}
_MAX_FALLBACK_EXT = 10

IMAGE_EXTS = frozenset(_KNOWN_EXT.values())
"""Extensions an image nanobatch stores can have: the service may answer PNG or JPEG (or
another image type), so an item's name is known only up to its extension before it is made."""


def is_plain_key(key: str) -> bool:
    """True when the key is used as the object name unchanged (1-200 safe chars, not . or ..)."""
    return key not in (".", "..") and _SAFE_KEY.fullmatch(key) is not None


def stem_for_key(key: str) -> str:
    """The name without extension: the key itself, or its sanitised form plus a hash suffix."""
    if is_plain_key(key):
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{_UNSAFE_CHAR.sub('_', key)[:SANITISED_PREFIX]}-{digest[:HASH_DIGITS]}"


def object_name(key: str, ext: str) -> str:
    """`<stem>.<ext>` for an item key, e.g. ("sku-1", "png") -> "sku-1.png"."""
    return f"{stem_for_key(key)}.{ext}"


def ext_for_mime(mime: str) -> str:
    """File extension for a mime type: png, jpg, webp, ...; "bin" when nothing sensible."""
    base = mime.split(";", 1)[0].strip().lower()
    known = _KNOWN_EXT.get(base)
    if known is not None:
        return known
    if "/" not in base:
        return "bin"
    subtype = base.split("/", 1)[1].split("+", 1)[0]
    subtype = subtype.removeprefix("x-").removeprefix("vnd.")
    ext = re.sub(r"[^a-z0-9]", "", subtype)[:_MAX_FALLBACK_EXT]
    return ext or "bin"


def image_stem(name: str) -> str | None:
    """The stem of an image's object name ("k1.v1.png" -> "k1.v1"), or None when `name` does
    not end in an image extension (manifest.parquet, notes.txt, a folder with no extension)."""
    stem, dot, ext = name.rpartition(".")
    return stem if dot and stem and ext in IMAGE_EXTS else None
