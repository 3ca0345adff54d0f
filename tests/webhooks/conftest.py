"""Fixtures for the webhook tests: the drill harness of tests/faults and signing helpers."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "faults"))

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from faults_helpers import Drill  # noqa: E402

from pipeline.emulator import Emulator  # noqa: E402


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """A quick emulator: small images, batches done a fraction of a second after create."""
    with Emulator(image_scale=0.02, pending_seconds=0.2, running_seconds=0.3) as e:
        e.webhooks.retry_base_s = 0.1
        yield e


@pytest.fixture
def drill(tmp_path: Path, emu: Emulator, sqlite_url: str) -> Drill:
    return Drill(tmp_path, emu, sqlite_url)
