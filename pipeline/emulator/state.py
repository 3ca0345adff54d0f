"""Shared emulator state: configuration, the Files store (uploads, expiry, limits), the log.

Uploaded bytes go straight to files under the data directory; nothing large is held in memory.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.emulator.clock import Clock
from pipeline.emulator.faults import FaultPlan
from pipeline.emulator.wire import ApiError, file_missing, new_id, quota_details, rfc3339

FILE_TTL = timedelta(hours=48)
COPY_BYTES = 1 << 20
FILE_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
# The service writes a File's uri (and downloadUri) with v1beta whatever version was asked
# (https://ai.google.dev/api/files: "uri": "https://generativelanguage.googleapis.com/v1beta/
# files/abc123"); clients pass it back in fileData.fileUri.
FILE_URI_VERSION = "v1beta"


@dataclass
class Config:
    """Knobs fixed at start."""

    data_dir: Path
    api_key: str | None = None
    image_scale: float = 1.0
    enqueued_token_quota: int | dict[str, int] = 2_000_000
    max_live_batches: int = 100
    pending_seconds: float = 60.0
    running_seconds: float = 120.0
    max_file_bytes: int = 2 * 1024**3
    max_storage_bytes: int = 20 * 1024**3

    def quota(self, model: str) -> int:
        """The enqueued-token quota of ``model``."""
        q = self.enqueued_token_quota
        return q if isinstance(q, int) else int(q.get(model, q.get("default", 2_000_000)))


@dataclass
class FileRec:
    """A stored file (uploaded input or generated batch output)."""

    id: str
    mime: str
    size: int
    created: datetime
    path: Path
    source: str = "UPLOADED"
    display_name: str | None = None
    sha256: str = ""

    def to_json(self, base: str) -> dict[str, Any]:
        """The File resource."""
        out: dict[str, Any] = {"name": f"files/{self.id}"}
        if self.display_name:
            out["displayName"] = self.display_name
        out |= {
            "mimeType": self.mime,
            "sizeBytes": str(self.size),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.created + FILE_TTL),
            "sha256Hash": self.sha256,
            "uri": f"{base}/{FILE_URI_VERSION}/files/{self.id}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.source == "GENERATED":
            out["downloadUri"] = (
                f"{base}/download/{FILE_URI_VERSION}/files/{self.id}:download?alt=media"
            )
        return out


@dataclass
class Upload:
    """A resumable upload in progress."""

    id: str
    path: Path
    mime: str
    display_name: str | None
    wanted_id: str | None
    expected: int | None
    received: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)


class State:
    """Everything the request handlers share. ``lock`` guards the dicts and the log."""

    def __init__(self, config: Config, clock: Clock, faults: Callable[[], FaultPlan]) -> None:
        self.config = config
        self.clock = clock
        self.get_faults = faults
        self.lock = threading.RLock()
        self.files: dict[str, FileRec] = {}
        self.uploads: dict[str, Upload] = {}
        self.request_log: list[dict[str, Any]] = []
        for sub in ("files", "uploads", "batches"):
            (config.data_dir / sub).mkdir(parents=True, exist_ok=True)

    def log(self, entry: dict[str, Any]) -> None:
        """Append to the request log."""
        with self.lock:
            self.request_log.append(entry)

    # --- files -----------------------------------------------------------------------------

    def live_file(self, file_id: str) -> FileRec:
        """The file, or the service's 403 when it is missing or past its 48 h."""
        with self.lock:
            rec = self.files.get(file_id)
            if rec is not None and self.clock.now() >= rec.created + FILE_TTL:
                self._forget(rec)
                rec = None
        if rec is None:
            raise file_missing(file_id)
        return rec

    def file_live_at(self, file_id: str, when: datetime) -> bool:
        """Whether the file existed here and had not expired at ``when``."""
        with self.lock:
            rec = self.files.get(file_id)
        return rec is not None and rec.created <= when < rec.created + FILE_TTL

    def _forget(self, rec: FileRec) -> None:
        self.files.pop(rec.id, None)
        rec.path.unlink(missing_ok=True)

    def list_files(self) -> list[FileRec]:
        """Live files, newest first."""
        now = self.clock.now()
        with self.lock:
            for rec in [r for r in self.files.values() if now >= r.created + FILE_TTL]:
                self._forget(rec)
            return sorted(self.files.values(), key=lambda r: r.created, reverse=True)

    def delete_file(self, file_id: str) -> None:
        """Delete a file (403 when missing)."""
        rec = self.live_file(file_id)
        with self.lock:
            self._forget(rec)

    def add_file(self, rec: FileRec) -> None:
        """Register a stored file."""
        with self.lock:
            self.files[rec.id] = rec

    def stored_bytes(self) -> int:
        """Bytes of live uploaded files (the project storage quota counts these)."""
        return sum(r.size for r in self.list_files() if r.source == "UPLOADED")

    # --- uploads ---------------------------------------------------------------------------

    def start_upload(self, meta: dict[str, Any], mime: str, size: int | None) -> Upload:
        """Open a resumable upload after checking the size limits."""
        self._check_size(size or 0, size or 0)
        wanted = meta.get("name")
        wanted_id = str(wanted).removeprefix("files/") if wanted else None
        if wanted_id is not None:
            self._check_wanted(wanted_id)
        uid = new_id(32)
        up = Upload(
            id=uid,
            path=self.config.data_dir / "uploads" / uid,
            mime=mime,
            display_name=meta.get("display_name") or meta.get("displayName"),
            wanted_id=wanted_id,
            expected=size,
        )
        up.path.touch()
        with self.lock:
            self.uploads[uid] = up
        return up

    def _check_wanted(self, file_id: str) -> None:
        if not FILE_ID.match(file_id):
            raise ApiError(400, f"Invalid file name: files/{file_id}")
        with self.lock:
            if file_id in self.files:
                raise ApiError(409, f"File files/{file_id} already exists.")

    def _check_size(self, file_size: int, adding: int) -> None:
        limit = self.config.max_file_bytes
        if file_size > limit:
            raise ApiError(400, f"File size {file_size} bytes exceeds the limit of {limit} bytes.")
        if self.stored_bytes() + adding > self.config.max_storage_bytes:
            raise ApiError(
                429,
                "Storage quota exceeded: the project's files may not exceed "
                f"{self.config.max_storage_bytes} bytes in total.",
                # Space comes back when files expire or are deleted: no sooner than a minute.
                quota_details("storage", None, "60s"),
            )

    def upload_chunk(
        self, up: Upload, offset: int, length: int, body: BinaryIO, finalize: bool
    ) -> FileRec | None:
        """Append ``length`` bytes from ``body`` at ``offset``; finish when ``finalize``."""
        with up.lock:
            if offset != up.received:
                raise ApiError(400, f"Invalid upload offset {offset}; expected {up.received}.")
            self._check_size(up.received + length, up.received + length)
            _copy(body, length, up)
            if not finalize:
                return None
            return self._finish_upload(up)

    def _finish_upload(self, up: Upload) -> FileRec:
        file_id = up.wanted_id or new_id(12)
        with self.lock:
            self.uploads.pop(up.id, None)
            if file_id in self.files:
                raise ApiError(409, f"File files/{file_id} already exists.")
            path = self.config.data_dir / "files" / file_id
            up.path.replace(path)
            rec = FileRec(
                id=file_id,
                mime=up.mime,
                size=up.received,
                created=self.clock.now(),
                path=path,
                display_name=up.display_name,
                sha256=sha256_field(up.hasher.hexdigest()),
            )
            self.files[file_id] = rec
        return rec


def _copy(body: BinaryIO, length: int, up: Upload) -> None:
    """Stream ``length`` bytes from the socket to the upload's file."""
    with up.path.open("ab") as out:
        left = length
        while left > 0:
            data = body.read(min(COPY_BYTES, left))
            if not data:
                raise ApiError(400, "Upload body ended early.")
            out.write(data)
            up.hasher.update(data)
            up.received += len(data)
            left -= len(data)


def sha256_field(hex_digest: str) -> str:
    """File.sha256Hash as the service fills it: the bytes field holds the hex digest's text, so
    the JSON is base64 of the 64 hex characters (88 characters)."""
    return base64.b64encode(hex_digest.encode("ascii")).decode("ascii")
