"""Fixtures for the drills: an emulator in this process and a Drill around it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults_helpers import Drill

from pipeline.emulator import Emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """A quick emulator: small images, batches done a fraction of a second after create."""
    with Emulator(image_scale=0.02, pending_seconds=0.1, running_seconds=0.2) as e:
        yield e


@pytest.fixture
def drill(tmp_path: Path, emu: Emulator, sqlite_url: str) -> Drill:
    """A Drill on SQLite with the quick emulator."""
    return Drill(tmp_path, emu, sqlite_url)


@pytest.fixture
def pg_drill(tmp_path: Path, emu: Emulator, pg_url: str) -> Drill:
    """A Drill on a PostgreSQL ledger (a database of its own) with the quick emulator."""
    return Drill(tmp_path, emu, pg_url)
