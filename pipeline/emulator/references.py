"""Reference images in request lines: ``fileData`` parts resolved against the emulator's own
uploaded files, as the service reads them while the batch runs.

A line naming a file that does not exist here, or has expired by the time its batch runs,
fails with the service's per-line error (7 PERMISSION_DENIED, "You do not have permission to
access the File <id> or it may not exist."). The image a line gets depends on the bytes of
the files it names (their sha256) and on ``generationConfig.seed``, so a test can tell which
references and which seed were sent; a line with neither gets the image it always got.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipeline.emulator.state import FILE_TTL, State
from pipeline.emulator.wire import pick

FILE_URI = re.compile(r"^(?:[a-z][a-z0-9+.-]*://[^/]+)?/?(?:v\d+[a-z]*\d*/)?files/([a-z0-9-]+)$")

Lookup = Callable[[str], str | None]
"""file id -> the sha256 of a file live when the batch runs, or None."""


def files_at(state: State, when: datetime) -> Lookup:
    """Which files a batch's lines may name: those uploaded here and not expired at `when`
    (the time the batch runs; its output is made lazily, maybe much later)."""

    def lookup(file_id: str) -> str | None:
        with state.lock:
            rec = state.files.get(file_id)
        if rec is None or rec.created > when or when >= rec.created + FILE_TTL:
            return None
        return rec.sha256

    return lookup


def file_ids(request: Any) -> list[str | None]:
    """The file id of each ``fileData`` part of a request, in order (None for a uri that
    names no Files API file)."""
    found: list[str | None] = []
    contents = pick(request, "contents", default=[]) if isinstance(request, dict) else []
    for content in contents if isinstance(contents, list) else []:
        parts = pick(content, "parts", default=[]) if isinstance(content, dict) else []
        for part in parts if isinstance(parts, list) else []:
            data = pick(part, "fileData") if isinstance(part, dict) else None
            if isinstance(data, dict):
                match = FILE_URI.match(str(pick(data, "fileUri") or ""))
                found.append(match.group(1) if match else None)
    return found


def check(request: Any, files: Lookup) -> tuple[dict[str, Any] | None, str]:
    """(the per-line error, or None) and the text the line's image is made from beyond its
    prompt: the sha256s of the files it names and its seed ("" with neither)."""
    shas: list[str] = []
    for file_id in file_ids(request):
        if file_id is None:
            return {"code": 3, "message": "Invalid or unsupported file uri."}, ""
        sha = files(file_id)
        if sha is None:
            message = (
                f"You do not have permission to access the File {file_id} or it may not exist."
            )
            return {"code": 7, "message": message}, ""
        shas.append(sha)
    config = pick(request, "generationConfig", default={}) if isinstance(request, dict) else {}
    seed = pick(config, "seed") if isinstance(config, dict) else None
    if not shas and seed is None:
        return None, ""
    return None, f"\x1frefs:{','.join(shas)}\x1fseed:{seed}"
