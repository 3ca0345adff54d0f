"""A FakeBackend for the Gemini port (`pipeline.adapters.gemini.BatchBackend`): batches and
files in memory, scripted failures, no HTTP. Plug it in through the Context's backend
factory: `Context(settings, engine, backend_factory=lambda: fake)`.

What the tests script: `create_errors` (raised by the next creates, e.g. a 429), `lose_next
create answer` (the batch is made but the answer is lost), and `finish(name, lines)` (the
batch succeeded with this results file)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.adapters.backend import BatchBackend, RemoteBatch, RemoteFile
from pipeline.core.errors import ApiError, TransientApiError


def tiny_png() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def image_line(key: str, png: bytes | None = None) -> dict[str, Any]:
    """A results line whose response holds an image (with usage)."""
    data = base64.b64encode(png or tiny_png()).decode()
    return {
        "key": key,
        "response": {
            "candidates": [
                {
                    "content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": data}}]},
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 10,
                "candidatesTokenCount": 1120,
                "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}],
            },
        },
    }


def error_line(key: str, code: int = 500, message: str = "internal") -> dict[str, Any]:
    """A results line whose request failed."""
    return {"key": key, "error": {"code": code, "message": message}}


@dataclass
class FakeBackend:
    """The Gemini port in memory. Every call is appended to `calls` (method name first)."""

    files: dict[str, bytes] = field(default_factory=dict)
    batches: dict[str, RemoteBatch] = field(default_factory=dict)
    create_errors: list[ApiError] = field(default_factory=list)
    """Raised, first first, by the next creates (nothing is created)."""
    lose_next_create_answer: bool = False
    """The next create makes the batch, then its answer is lost (a 503 to the caller)."""
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def check_access(self) -> None:
        self.calls.append(("check_access",))

    def upload_jsonl(self, path: Path, display_name: str) -> RemoteFile:
        name = f"files/{len(self.files) + 1}"
        self.files[name] = path.read_bytes()
        self.calls.append(("upload_jsonl", display_name, name))
        return RemoteFile(name=name, expires_at=None)

    def upload_image(
        self, stream: io.IOBase, mime: str, name: str, display_name: str
    ) -> RemoteFile:
        self.calls.append(("upload_image", name, mime))
        if name in self.files:
            raise ApiError(f"Gemini API 409 File {name} already exists.", code=409)
        self.files[name] = stream.read()  # type: ignore[attr-defined]
        return self._file(name)

    def get_file(self, name: str) -> RemoteFile | None:
        self.calls.append(("get_file", name))
        return self._file(name) if name in self.files else None

    def _file(self, name: str) -> RemoteFile:
        expires = datetime.now(UTC) + timedelta(hours=48)
        return RemoteFile(name, expires, uri=f"https://fake/v1beta/{name}", state="ACTIVE")

    def create_batch(
        self,
        model: str,
        file_name: str,
        display_name: str,
        webhook: tuple[str, dict[str, str]] | None = None,
    ) -> RemoteBatch:
        self.calls.append(("create_batch", model, file_name, display_name))
        if self.create_errors:
            raise self.create_errors.pop(0)
        if file_name not in self.files:
            raise ApiError(f"Gemini API 404 no file {file_name}", code=404)
        name = f"batches/{len(self.batches) + 1}"
        batch = RemoteBatch(name, display_name, "JOB_STATE_PENDING", None, None)
        self.batches[name] = batch
        if self.lose_next_create_answer:
            self.lose_next_create_answer = False
            raise TransientApiError("Gemini API 503 the answer was lost", code=503)
        return batch

    def get_batch(self, name: str) -> RemoteBatch:
        self.calls.append(("get_batch", name))
        if name not in self.batches:
            raise ApiError(f"Gemini API 404 no batch {name}", code=404)
        return self.batches[name]

    def list_batches(self, page_size: int = 100) -> Iterator[RemoteBatch]:
        self.calls.append(("list_batches",))
        yield from reversed(list(self.batches.values()))  # newest first, like the service

    def cancel_batch(self, name: str) -> None:
        self.calls.append(("cancel_batch", name))
        self.batches[name] = replace(self.batches[name], state="JOB_STATE_CANCELLED")

    def download(self, file_name: str, destination: Path) -> int:
        self.calls.append(("download", file_name))
        data = self.files[file_name]
        destination.write_bytes(data)
        return len(data)

    # ── scripting ────────────────────────────────────────────────────────────

    def requests(self, name: str) -> list[dict[str, Any]]:
        """The request lines of batch `name`'s input file."""
        batch = self.batches[name]
        file_name = next(
            c[2] for c in self.calls if c[0] == "create_batch" and c[3] == batch.display_name
        )
        return [json.loads(line) for line in self.files[file_name].splitlines() if line]

    def finish(self, name: str, lines: list[dict[str, Any]]) -> None:
        """Batch `name` succeeded with these results lines."""
        out = f"files/results-{name.rsplit('/', 1)[-1]}"
        self.files[out] = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self.batches[name] = replace(
            self.batches[name], state="JOB_STATE_SUCCEEDED", output_file=out
        )

    def creates(self) -> int:
        """How many batches were made on the fake service."""
        return len(self.batches)


def _check_port(fake: FakeBackend) -> BatchBackend:
    return fake  # `mypy --explicit-package-bases tests/fakes.py` proves it fits the port
