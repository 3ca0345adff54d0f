"""adapters.malloc: the arena cap takes on glibc and is a no-op (False) without mallopt."""

from __future__ import annotations

import ctypes
import platform

import pytest

from pipeline.adapters import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_arena_cap_takes_on_glibc() -> None:
    assert malloc.cap_arenas() is True


def test_a_c_library_without_mallopt_leaves_the_allocator_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoMallopt:
        def __init__(self, name: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert malloc.cap_arenas() is False
