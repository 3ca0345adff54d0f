"""A batch's JSONL request file in the spool folder (`<display name>.input.jsonl`).

Recording a run writes each of its first batches' files while it packs them, from the very
lines it measured, and the ledger keeps each file's sha256 (`batches.shard_sha256`). The
upload sends such a file as it is when its bytes still hash to that value; otherwise (no
file: another machine's tick, a spool wiped, a batch formed later) it builds the file from
the ledger again, which gives the same bytes. The ledger stays the truth; the file only
saves reading a batch's rows back and encoding them a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from pipeline.adapters.log import get_logger
from pipeline.adapters.private import make_private_dir, open_private
from pipeline.adapters.storage import sha256_file

log = get_logger()

SUFFIX = ".input.jsonl"


def path_for(spool: Path, display_name: str) -> Path:
    return spool / f"{display_name}{SUFFIX}"


class ShardWriter:
    """Writes one batch's file under a temporary name; `finish` renames it into place.

    The file only saves work later, so a write that fails (a full disk, say) drops the file
    and the batch is built from the ledger when it is uploaded; recording goes on."""

    def __init__(self, spool: Path, display_name: str) -> None:
        self.path = path_for(spool, display_name)
        self.part = self.path.with_name(self.path.name + ".part")
        self.hasher = hashlib.sha256()
        self.out: BinaryIO | None = None
        try:
            make_private_dir(spool)
            self.out = open_private(self.part)
        except OSError as exc:
            self._give_up(exc)

    def write(self, data: bytes) -> None:
        if self.out is None:
            return
        try:
            self.out.write(data)
        except OSError as exc:
            self._give_up(exc)
            return
        self.hasher.update(data)

    def finish(self) -> str | None:
        """Close and rename the file into place; its sha256 (hex), None if it was dropped."""
        if self.out is None:
            return None
        try:
            self.out.close()
            os.replace(self.part, self.path)
        except OSError as exc:
            self._give_up(exc)
            return None
        self.out = None
        return self.hasher.hexdigest()

    def discard(self) -> None:
        """Remove whatever was written (the run was not recorded)."""
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()
            self.out = None
        for path in (self.part, self.path):
            with contextlib.suppress(OSError):  # gone, or its folder never was
                path.unlink()

    def _give_up(self, exc: OSError) -> None:
        log.warning("batch_file_not_written", file=str(self.path), error=exc.strerror or str(exc))
        self.discard()


def sha256_of(path: Path) -> str | None:
    """The file's sha256 (hex), or None when it cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def written(spool: Path, display_name: str, sha256: str | None) -> Path | None:
    """The batch's file when it exists with exactly the bytes recorded, else None."""
    if sha256 is None:
        return None
    path = path_for(spool, display_name)
    return path if sha256_of(path) == sha256 else None
