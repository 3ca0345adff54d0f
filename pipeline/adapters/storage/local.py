"""LocalStore: an output folder on a local (or mounted) file system.

Owns create-once writes to files: bytes go to a hidden temporary name in the target folder
and are hard-linked to the final name, which fails if the name exists, so an existing file
is never replaced unless overwrite is asked for. Durability is batched: `sync()` (one
syncfs of the folder's file system) makes every object written so far durable, and callers
call it before they record those objects, so a recorded object is always on disk without
paying one fsync per image. Content types and object
metadata are not kept for local files: the manifest carries them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.adapters.storage.base import (
    ObjectNotFound,
    StoredObject,
    check_name,
    sha256_file,
    sha256_hex,
)
from pipeline.core.errors import ObjectConflict, StorageError

_HOST = socket.gethostname().replace(".", "-")

# os.link fails with these where the file system has no hard links (some FUSE/SMB mounts).
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}


def path_from_uri(uri: str) -> Path:
    """A local path from a plain path or a file:// uri, made absolute (not resolved)."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"file uri {uri!r} names host {parsed.netloc!r}; use a local path")
        uri = unquote(parsed.path)
    return Path(os.path.abspath(os.path.expanduser(uri)))


class LocalStore:
    """An output folder. Thread-safe: every call works on its own temporary file."""

    puts_in_flight: int | None = None
    """A write to the page cache has no round trip to wait out: one per parse worker."""

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = path_from_uri(str(root))
        self.base_uri = str(self.root)
        self._fsync = fsync
        self._swept: set[Path] = set()
        self._sweep_lock = threading.Lock()

    def sync(self) -> None:
        """Flush the output folder's file system (syncfs), or everything (sync) elsewhere."""
        if self._fsync and self.root.exists():
            _syncfs(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.base_uri!r})"

    def check_writable(self) -> None:
        """Create the folder if needed and prove a file can be created and removed in it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".nanobatch-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(
                f"cannot write to the output folder {self.root}: {exc.strerror or exc}. "
                "Check that the path is a folder (or can be created) and that this user "
                "can write to it, or change [output] uri in the job spec."
            ) from exc

    def uri_for(self, name: str) -> str:
        """The absolute path of `name` in the folder."""
        return str(self.root / check_name(name))

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
        """Store `data` once at `name`; adopt identical bytes; refuse different ones."""
        final = Path(self.uri_for(name))
        digest = sha256 or sha256_hex(data)
        existing = self._sha_or_none(final)
        if existing is not None and (existing == digest or not overwrite):
            return self._settle(final, digest, existing, len(data))
        tmp = self._write_temp(final, data)
        try:
            written = self._commit(tmp, final, overwrite)
        finally:
            tmp.unlink(missing_ok=True)
        if written:
            return StoredObject(str(final), digest, len(data), adopted=False)
        return self._settle(final, digest, self._sha_or_none(final), len(data))

    def put_file(self, name: str, path: Path, *, content_type: str) -> str:
        """Copy the file in under a temporary name, fsync, and rename it over `name`."""
        final = Path(self.uri_for(name))
        tmp = self._temp_path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp)
            if self._fsync:
                _fsync_path(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            raise self._storage_error(final, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
        return str(final)

    def put_file_once(
        self, name: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Link (or copy) the file in under a temporary name, fsync, and hard-link it to
        `name` only if `name` is free; adopt identical bytes, refuse different ones."""
        final = Path(self.uri_for(name))
        digest = sha256_file(path)
        size = path.stat().st_size
        existing = self._sha_or_none(final)
        if existing is not None:
            return self._settle(final, digest, existing, size)
        tmp = self._temp_path(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._sweep_once(final.parent)
            try:
                os.link(path, tmp)  # same file system: no copy of a large file
            except OSError:
                shutil.copyfile(path, tmp)
            if self._fsync:
                _fsync_path(tmp)
            written = _link_new(tmp, final)
        except OSError as exc:
            raise self._storage_error(final, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
        if written:
            return StoredObject(str(final), digest, size, adopted=False)
        return self._settle(final, digest, self._sha_or_none(final), size)

    def existing_sha256(self, name: str) -> str | None:
        """sha256 of the file at `name`, or None when there is none."""
        return self._sha_or_none(Path(self.uri_for(name)))

    def read_bytes(self, uri: str) -> bytes:
        """Bytes of any local file, given as a path or file:// uri."""
        path = path_from_uri(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{path} does not exist (any more)") from exc
        except OSError as exc:
            raise self._storage_error(path, exc) from exc

    def iter_names(self) -> Iterator[str]:
        """Names in the folder from one directory listing (streamed); none when there is no
        folder yet. Hidden names (temporary files, probes) are left out."""
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        yield entry.name
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(
                f"cannot list the output folder {self.root}: {exc.strerror or exc}. Check "
                "that the path is a folder this user can read, or change [output] uri."
            ) from exc

    def _settle(self, final: Path, digest: str, existing: str | None, size: int) -> StoredObject:
        """The outcome when `final` already existed: adopt it, or raise ObjectConflict."""
        if existing is None:
            if final.is_symlink():  # a link to nothing: the name is taken, the target absent
                raise StorageError(
                    f"{final} is a dangling symbolic link (to {os.readlink(final)}) where an "
                    "image must go; remove the link or make it point at a file, then run the "
                    "tick again"
                )
            raise StorageError(f"{final} vanished while it was being written; run the tick again")
        if existing != digest:
            raise ObjectConflict(
                f"{final} already exists with different bytes (sha256 {existing[:12]}..., "
                f"new {digest[:12]}...); set [output] overwrite = true to replace it, "
                "or move the old file away"
            )
        return StoredObject(str(final), digest, size, adopted=True)

    def _sha_or_none(self, path: Path) -> str | None:
        try:
            return sha256_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._storage_error(path, exc) from exc

    def _sweep_once(self, folder: Path) -> None:
        """Sweep a dead writer's leftovers once per folder and process (not per write: a
        folder of 10,000 images must not be listed 10,000 times)."""
        with self._sweep_lock:
            if folder in self._swept:
                return
            self._swept.add(folder)
        _sweep_dead_temps(folder)

    def _temp_path(self, final: Path) -> Path:
        # Host and pid in the name let a later writer of the same object tell a dead
        # writer's leftover (a process killed mid-write) from a live one's work in progress.
        return final.with_name(f".{final.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex}.tmp")

    def _write_temp(self, final: Path, data: bytes) -> Path:
        """Write `data` to a fresh temporary file beside `final`, fsynced; return its path."""
        tmp = self._temp_path(final)
        try:
            self._sweep_once(final.parent)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:  # the folder is made on the first write into it
                final.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                with os.fdopen(fd, "wb", closefd=False) as fh:
                    fh.write(data)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._storage_error(final, exc) from exc
        return tmp

    def _commit(self, tmp: Path, final: Path, overwrite: bool) -> bool:
        """Give `tmp` the name `final`; False when `final` exists and overwrite is off."""
        try:
            if overwrite:
                os.replace(tmp, final)
                return True
            return _link_new(tmp, final)
        except OSError as exc:
            raise self._storage_error(final, exc) from exc

    def _storage_error(self, path: Path, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot write {path} in the output folder {self.root}: {exc.strerror or exc}. "
            "Check free space and permissions, then run the tick again."
        )


def _link_new(tmp: Path, final: Path) -> bool:
    """Hard-link `tmp` to `final` only if `final` is free; False when it exists."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
    # No hard links here: rename after a last look (a small race, never a torn file).
    if final.exists():
        return False
    os.replace(tmp, final)
    return True


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_dead_temps(folder: Path) -> None:
    """Remove temporary files left in `folder` by dead processes of this host."""
    marker = f".{_HOST}."
    for leftover in folder.glob(f".*{marker}*.tmp"):
        pid = leftover.name.rsplit(marker, 1)[-1].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _syncfs(path: Path) -> None:
    """syncfs(2) on the file system holding `path`; os.sync() where libc has none."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.syncfs  # noqa: B018 - probe: not every libc has it
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
