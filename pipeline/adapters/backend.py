"""The batch service's port: `BatchBackend`, what the shell calls on either channel (the
Gemini Developer API in `gemini`, Vertex AI in `vertex`), and the frozen values it answers
with. No SDK type crosses it, and importing it imports no SDK.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class RemoteFile:
    name: str
    expires_at: datetime | None
    uri: str | None = None
    """The uri lines name it by (fileData.fileUri)."""
    state: str | None = None
    """ACTIVE, PROCESSING or FAILED."""


@dataclass(frozen=True)
class RemoteBatch:
    name: str
    display_name: str | None
    state: str
    """JOB_STATE_* name."""
    output_file: str | None
    end_time: datetime | None


@dataclass(frozen=True)
class RemoteWebhook:
    id: str
    uri: str
    events: tuple[str, ...]
    state: str
    name: str | None = None
    secret: str | None = field(default=None, repr=False)
    """The signing secret: only in create's answer, shown once."""


class BatchBackend(Protocol):
    def upload_jsonl(self, path: Path, display_name: str) -> RemoteFile: ...
    def upload_image(
        self, stream: io.IOBase, mime: str, name: str, display_name: str
    ) -> RemoteFile: ...
    def get_file(self, name: str) -> RemoteFile | None: ...
    def create_batch(
        self,
        model: str,
        file_name: str,
        display_name: str,
        webhook: tuple[str, dict[str, str]] | None = None,
    ) -> RemoteBatch: ...
    def get_batch(self, name: str) -> RemoteBatch: ...
    def list_batches(self, page_size: int = 100) -> Iterator[RemoteBatch]: ...
    def cancel_batch(self, name: str) -> None: ...
    def download(self, file_name: str, destination: Path) -> int: ...
    def check_access(self) -> None: ...
