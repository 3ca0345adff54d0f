"""The storage port: what harvest, submit and the prompt cache need from an output location.

Owns the `ObjectStore` protocol, the `StoredObject` value, `ObjectNotFound`, object-name
checks shared by the adapters, and streaming sha256 helpers. No adapter code lives here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.core.errors import StorageError

SHA256_METADATA_KEY = "nanobatch-sha256"
"""Custom metadata key that carries an object's sha256 (GCS), so a conflict check needs no
download."""

_CHUNK = 1 << 20


class ObjectNotFound(StorageError):
    """The object does not exist (any more); regenerate it or check the output location."""


@dataclass(frozen=True)
class StoredObject:
    """Where an object is and what it holds.

    `adopted` is True when the object was already there with the same sha256 and nothing
    was written.
    """

    uri: str
    sha256: str
    size: int
    adopted: bool


class ObjectStore(Protocol):
    """An output location: a local folder or a gs:// bucket prefix."""

    base_uri: str
    puts_in_flight: int | None
    """How many puts a harvest keeps going at once; None: one per parse worker. A remote
    store answers each put after a network round trip, so it wants more in flight."""

    def check_writable(self) -> None:
        """Create the folder if needed (local) or probe a small write+delete (gcs)."""
        ...

    def put_once(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        overwrite: bool = False,
        sha256: str | None = None,
    ) -> StoredObject:
        """Store `data` at `name` exactly once: adopt identical bytes, refuse different ones."""
        ...

    def put_file(self, name: str, path: Path, *, content_type: str) -> str:
        """Atomically store (or replace) `name` with the file's bytes; return its uri."""
        ...

    def put_file_once(
        self, name: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """`put_once` for a local file of any size (streamed, never read whole): the object
        appears whole under `name` or not at all; identical bytes there are adopted."""
        ...

    def sync(self) -> None:
        """Make every object put so far durable. Call it before recording them anywhere."""
        ...

    def uri_for(self, name: str) -> str:
        """The uri `name` has (or would have) in this store."""
        ...

    def existing_sha256(self, name: str) -> str | None:
        """sha256 of the object at `name`, or None when there is none."""
        ...

    def read_bytes(self, uri: str) -> bytes:
        """Bytes of any object of this store's kind (local path/file:// or gs://)."""
        ...

    def iter_names(self) -> Iterator[str]:
        """Names of the objects directly in the location (not in sub-folders, not hidden ones
        starting with "."), streamed from one listing: a page at a time, never all at once."""
        ...


def check_name(name: str) -> str:
    """Refuse names that could escape the store's folder; return the name unchanged.

    A name is one or more "/"-separated segments, none empty, "." or "..", with no NUL or
    backslash.
    """
    parts = name.split("/")
    bad = not name or "\x00" in name or "\\" in name
    if bad or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object name {name!r}: use naming.object_name()")
    return name


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    """Hex sha256 of a stream of byte chunks."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with path.open("rb") as fh:
        return sha256_chunks(iter(lambda: fh.read(_CHUNK), b""))
