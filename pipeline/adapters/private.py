"""Files only this user may read: the ledger, the spool (its files hold prompts) and the
state folder. Folders nanobatch creates are 0700 and files it creates 0600, whatever the
umask; a folder that already exists keeps the mode its owner gave it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> Path:
    """Create `path` and any missing parents as 0700 (`mkdir -p -m 700` for every level it
    creates); nothing changes for folders that exist. OSError as mkdir raises it."""
    missing: list[Path] = []
    level = path
    while not level.exists() and level != level.parent:
        missing.append(level)
        level = level.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            folder.mkdir(mode=PRIVATE_DIR)
    path.mkdir(mode=PRIVATE_DIR, exist_ok=True)  # raises when `path` is not a folder
    return path


def open_private(path: Path) -> BinaryIO:
    """`path` opened for writing from empty ("wb"), created 0600 (made 0600 if it was there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists (its mode is then left as it is)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.close(fd)
