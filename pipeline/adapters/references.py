"""Reading reference images (CONTRACT.md section 9): a cell of an `[input] images` column to a
`Ref` (sha256, mime type by content, size, source) or the reason it cannot be sent, and the
stream an upload reads.

Local paths are relative to the spec file's folder. A gs://bucket/object is only checked when
the book is given a way to read GCS (`submit`); `plan` touches no network and accepts it as
it is. Reading streams: a file is read once, in 1 MiB chunks, to find its kind and hash, and
never held in memory. A table of a million rows sharing a thousand images reads each image
once: lookups are remembered by cell, and hashes by (path, size, mtime) so the same file
named two ways is read once too.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

from pipeline.adapters.storage import ObjectNotFound
from pipeline.core.errors import StorageError
from pipeline.core.refimage import HEAD_BYTES, Ref, not_an_image, sniff_mime, too_large

CHUNK: Final = 1 << 20
MEMO_LIMIT: Final = 65_536
"""Cells remembered at once (a table with more distinct images starts over, reading again)."""

GcsOpener = Callable[[str], tuple[int, BinaryIO]]
"""(size, a binary stream) of a gs://bucket/object; ObjectNotFound when there is none,
StorageError when it cannot be read."""


class ReferenceBook:
    """Turns cells into `Ref`s (the core's `RefLookup`), remembering what it has read."""

    def __init__(self, base: Path, gcs: GcsOpener | None = None) -> None:
        self.base = base
        self.gcs = gcs
        self._by_cell: dict[str, Ref | str] = {}
        self._by_stat: dict[tuple[str, int, int], Ref | str] = {}
        self.reads = 0
        """Files and objects read whole so far (tests count them)."""

    def __call__(self, cell: str) -> Ref | str:
        found = self._by_cell.get(cell)
        if found is None:
            if len(self._by_cell) >= MEMO_LIMIT:
                self._by_cell.clear()
                self._by_stat.clear()
            found = self._by_cell[cell] = self._lookup(cell)
        return found

    def _lookup(self, cell: str) -> Ref | str:
        if cell.startswith("gs://"):
            return self._gcs(cell)
        if "://" in cell:
            return f"{cell} is not a local path or gs://bucket/object"
        path = os.path.normpath(os.path.join(self.base, os.path.expanduser(cell)))
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return f"no such file {path}"
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"
        if stat.S_ISDIR(info.st_mode):
            return f"{path} is a folder, not an image file"
        if not stat.S_ISREG(info.st_mode):
            return f"{path} is not a regular file"
        problem = too_large(info.st_size)
        if problem is not None:
            return f"{path} {problem}"
        key = (path, info.st_size, info.st_mtime_ns)
        found = self._by_stat.get(key)
        if found is None:
            found = self._by_stat[key] = self._read_local(path, info.st_size)
        return found

    def _read_local(self, path: str, size: int) -> Ref | str:
        try:
            with open(path, "rb") as fh:
                return self._read(fh, path, size)
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror or exc}"

    def _gcs(self, uri: str) -> Ref | str:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if not bucket or not name or name.endswith("/"):
            return f"{uri} is not a gs://bucket/object uri"
        if self.gcs is None:
            return Ref("", "", 0, uri)  # checked at submit
        try:
            size, stream = self.gcs(uri)
        except ObjectNotFound:
            return f"no such object {uri}"
        problem = too_large(size)
        if problem is not None:
            stream.close()
            return f"{uri} {problem}"
        with stream:
            try:
                return self._read(stream, uri, size)
            except OSError as exc:
                raise StorageError(f"cannot read {uri}: {exc}") from exc

    def _read(self, stream: BinaryIO, source: str, size: int) -> Ref | str:
        """Kind from the first bytes, sha256 of them all, one chunk at a time."""
        self.reads += 1
        first = stream.read(CHUNK)
        mime = sniff_mime(first[:HEAD_BYTES])
        if mime is None:
            return f"{source} {not_an_image()}"
        digest = hashlib.sha256(first)
        read = len(first)
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            read += len(chunk)
        problem = too_large(read)
        if problem is not None:  # grew since it was measured
            return f"{source} {problem}"
        return Ref(digest.hexdigest(), mime, read, source)


class HashingReader(io.RawIOBase):
    """A read-only stream over another that hashes what is read through it, so an upload can
    prove it sent the bytes the ledger recorded. Seeking back to the start starts over."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw = raw
        self.digest = hashlib.sha256()
        self.start = raw.tell()

    def read(self, n: int | None = -1) -> bytes:
        data = self.raw.read(-1 if n is None else n)
        self.digest.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        at = self.raw.seek(offset, whence)
        if at == self.start:
            self.digest = hashlib.sha256()
        return at

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()

    def sha256(self) -> str:
        return self.digest.hexdigest()


def open_source(source: str, gcs: GcsOpener | None) -> tuple[int, BinaryIO]:
    """(size, stream) of a recorded reference's bytes, for its upload: OSError (local) or
    ObjectNotFound / StorageError (gs://) when it cannot be read any more."""
    if source.startswith("gs://"):
        if gcs is None:
            raise StorageError(f"cannot read {source}: no GCS access here")
        return gcs(source)
    fh = open(source, "rb")  # noqa: SIM115 (the caller closes it)
    return os.fstat(fh.fileno()).st_size, fh
