"""The emulator's accelerated clock: runs ``speed`` times faster than real time, can be advanced."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class Clock:
    """Emulator time (UTC). ``now()`` moves ``speed`` times faster than wall time."""

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._lock = threading.Lock()
        self._speed = speed
        self._base = start or datetime.now(UTC)
        self._t0 = time.monotonic()
        self._offset = 0.0

    @property
    def speed(self) -> float:
        """The acceleration factor."""
        return self._speed

    def now(self) -> datetime:
        """The current emulator time."""
        with self._lock:
            elapsed = (time.monotonic() - self._t0) * self._speed + self._offset
        return self._base + timedelta(seconds=elapsed)

    def advance(self, seconds: float) -> None:
        """Jump emulator time forward by ``seconds``."""
        with self._lock:
            self._offset += seconds
