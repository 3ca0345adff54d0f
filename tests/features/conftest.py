"""Fixtures for the feature tests: a fast in-process emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.emulator import Emulator


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """An emulator whose batches finish once its clock is pushed on."""
    with Emulator(image_scale=0.02, pending_seconds=5, running_seconds=5) as e:
        yield e


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """`main()` binds structlog to the stderr of its test; unbind it afterwards."""
    yield
    import logging

    import structlog

    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []
