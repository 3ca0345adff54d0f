"""Crash drills: `crashpoint(name)` kills the process with SIGKILL at a named place when the
drill is armed for it, so tests can prove that a kill anywhere loses nothing and pays nothing
twice. Armed once by the CLI from Settings.crash_at (env NANOBATCH_CRASH_AT); disarmed it
costs one comparison.

`NANOBATCH_CRASH_AT=name` dies the first time `name` is reached; `name:N` on the Nth time.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_target: str | None = None
_nth: int = 1
_seen: int = 0
_lock = threading.Lock()


def arm(spec: str | None) -> None:
    """Arm the drill for `name` or `name:N` (None or empty disarms it)."""
    global _target, _nth, _seen
    _seen = 0
    if not spec:
        _target, _nth = None, 1
        return
    name, sep, count = spec.rpartition(":")
    if sep and count.isdigit() and name:
        _target, _nth = name, max(1, int(count))
    else:
        _target, _nth = spec, 1


def crashpoint(name: str) -> None:
    """SIGKILL this process when the drill is armed for `name` and this is the Nth time."""
    global _seen
    if _target is None or name != _target:
        return
    with _lock:
        _seen += 1
        if _seen < _nth:
            return
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
