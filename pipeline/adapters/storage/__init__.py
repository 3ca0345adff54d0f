"""Output storage: where images, manifest.parquet and rejects.csv are written.

Owns `open_store` (a uri to the right adapter) and re-exports the port (`ObjectStore`,
`StoredObject`, `ObjectNotFound`). Adapters: `LocalStore` (a folder, `local.py`) and
`GcsStore` (gs://, `gcs.py`, imported only when a gs:// uri is opened).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.adapters.storage.base import (
    SHA256_METADATA_KEY,
    ObjectNotFound,
    ObjectStore,
    StoredObject,
    sha256_file,
    sha256_hex,
)
from pipeline.adapters.storage.local import LocalStore
from pipeline.core.errors import UsageError

if TYPE_CHECKING:
    from pipeline.adapters.storage.gcs import GcsStore

__all__ = [
    "SHA256_METADATA_KEY",
    "GcsStore",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "StoredObject",
    "open_store",
    "sha256_file",
    "sha256_hex",
]


def open_store(uri: str, *, project: str | None = None) -> ObjectStore:
    """A store for `uri`: gs://bucket/prefix -> GcsStore; a path or file:// uri -> LocalStore.

    Nothing is touched on the way: call `check_writable()` before spending anything.
    """
    if uri.startswith("gs://"):
        from pipeline.adapters.storage.gcs import GcsStore

        return GcsStore(uri, project=project)
    scheme, sep, _ = uri.partition("://")
    if sep and scheme != "file":
        raise UsageError(
            f"output uri {uri!r}: the {scheme}:// scheme is not supported; use a local folder, "
            "file:///abs/path or gs://bucket/prefix"
        )
    return LocalStore(uri)


def __getattr__(name: str) -> object:
    """`pipeline.adapters.storage.GcsStore` without importing google-cloud-storage up front."""
    if name == "GcsStore":
        from pipeline.adapters.storage.gcs import GcsStore

        return GcsStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
