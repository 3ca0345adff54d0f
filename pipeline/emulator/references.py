"""Reference images in request lines: the image a line gets depends on the bytes of the files
its ``fileData`` parts name (their sha256) and on ``generationConfig.seed``, so a test can tell
which references and which seed were sent. A line with neither gets the image it always got.

Whether a named file may be read (it exists here and has not expired when the batch runs) is
`lines.check_inputs`' business; this module only reads the files' hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipeline.emulator.lines import FILE_URI
from pipeline.emulator.state import FILE_TTL, State
from pipeline.emulator.wire import pick

Lookup = Callable[[str], str | None]
"""file id -> the sha256 of a file live when the batch runs, or None."""


def files_at(state: State, when: datetime) -> Lookup:
    """The hashes of the files a batch's lines may name: those uploaded here and not expired
    at `when` (the time the batch runs; its output is made lazily, maybe much later)."""

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


def image_salt(request: Any, files: Lookup) -> str:
    """What a line's reference images and seed add to the text its image is made from: the
    sha256s of the files it names, in order, and its seed ("" with neither)."""
    shas = [files(file_id) or "" if file_id else "" for file_id in file_ids(request)]
    config = pick(request, "generationConfig", default={}) if isinstance(request, dict) else {}
    seed = pick(config, "seed") if isinstance(config, dict) else None
    if not shas and seed is None:
        return ""
    return f"\x1frefs:{','.join(shas)}\x1fseed:{seed}"
