"""PNG writer (stdlib only): deterministic 8-bit RGB images derived from a prompt, built fast.

Each row is half pseudo-random bytes (from a fixed pool, offset by the prompt's hash) and half a
flat colour (from the prompt's hash), so files compress to about half their raw size, like real
photos. The deflate stream is written by hand: the noisy half as stored blocks, the flat half as
one pre-compressed fragment reused for every row. That makes a full 2K image take a few tens of ms.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import threading
import zlib
from collections import OrderedDict
from functools import lru_cache

SIGNATURE = b"\x89PNG\r\n\x1a\n"
POOL_BYTES = 1 << 21
CACHE_BYTES = 48 << 20
FINAL_EMPTY_BLOCK = b"\x01\x00\x00\xff\xff"


@lru_cache(maxsize=1)
def _pool() -> bytes:
    return hashlib.shake_256(b"nanobatch-emulator-noise").digest(POOL_BYTES)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _stored(data: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(data), 65535):
        part = data[i : i + 65535]
        out += struct.pack("<BHH", 0, len(part), 0xFFFF ^ len(part)) + part
    return bytes(out)


def _flat_fragment(flat: bytes) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    return comp.compress(flat) + comp.flush(zlib.Z_SYNC_FLUSH)


def _idat(seed: bytes, width: int, height: int) -> bytes:
    """The zlib stream of the filtered scanlines."""
    row_len = 3 * width
    noisy = row_len // 2
    flat = (seed[:3] * (row_len // 3 + 1))[: row_len - noisy]
    fragment = _flat_fragment(flat)
    pool = _pool()
    if noisy + 2 > len(pool):  # rows wider than the pool (image_scale far above 1)
        pool = pool * (noisy // len(pool) + 2)
    span = len(pool) - noisy - 1
    start = int.from_bytes(seed[3:7], "big")
    step = int.from_bytes(seed[7:10], "big") | 1
    out = [b"\x78\x01"]
    adler = 1
    for y in range(height):
        off = (start + y * step) % span
        head = b"\x00" + pool[off : off + noisy]
        adler = zlib.adler32(flat, zlib.adler32(head, adler))
        out.append(_stored(head))
        out.append(fragment)
    out.append(FINAL_EMPTY_BLOCK)
    out.append(struct.pack(">I", adler))
    return b"".join(out)


def make_png(seed_text: str, width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` whose bytes are a pure function of the inputs."""
    seed = hashlib.sha256(seed_text.encode("utf-8")).digest()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", _idat(seed, width, height)),
            _chunk(b"IEND", b""),
        )
    )


class _B64Cache:
    """A small LRU of base64 PNGs, bounded by total size."""

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, int, int], value: str) -> None:
        if len(value) > self._limit // 4:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._size += len(value)
            while self._size > self._limit:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)


_CACHE = _B64Cache(CACHE_BYTES)


def png_base64(seed_text: str, width: int, height: int) -> str:
    """``make_png`` as base64 text, cached for repeated prompts."""
    key = (hashlib.sha256(seed_text.encode("utf-8")).hexdigest(), width, height)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    value = base64.b64encode(make_png(seed_text, width, height)).decode("ascii")
    _CACHE.put(key, value)
    return value
