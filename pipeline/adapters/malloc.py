"""The C allocator's arenas, capped for this process (glibc; elsewhere nothing changes).

glibc gives a thread that finds the arenas busy one of its own, up to eight per core, and
each keeps the memory freed in it. A harvest's threads (its parsers and its uploads)
allocate and free megabyte buffers, the decoded images: measured on fake-gcs-server with
16 uploads in flight, a 0.5 GB harvest peaked at 212 MiB with the default arenas and at
197 MiB with two, at the same speed (a local harvest's speed too, within noise).
"""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8
"""mallopt's parameter number for the arena cap (glibc's malloc.h)."""

ARENAS = 2


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Cap the process's malloc arenas; call before threads start. False where the C library
    has no mallopt (musl, macOS) or refuses."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, arenas))
