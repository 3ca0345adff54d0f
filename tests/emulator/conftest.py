"""Fixtures for the emulator tests: an Emulator on port 0 and a real google-genai client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from google import genai

from pipeline.emulator import Emulator

KEY = "test-key"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(image_scale=0.02, pending_seconds=30, running_seconds=60) as e:
        yield e


@pytest.fixture
def client(emu: Emulator) -> Any:
    return genai.Client(api_key=KEY, http_options={"base_url": emu.url})
