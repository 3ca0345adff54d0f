"""What the emulator's fault plans share (`faults.FaultPlan`, `vertex_faults.VertexFaults`):
reproducible chances, use counters, the check of a plan's keys and the matching of a line
fault by keys, rate and times.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar


class _Timed(Protocol):
    times: int


F = TypeVar("F", bound=_Timed)


def chance(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """ValueError naming the keys of `d` that are not fields of the plan `cls`."""
    known = {f.name for f in fields(cls) if not f.name.startswith("_")}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")


@dataclass
class HttpFault:
    """Answer an endpoint with ``status`` the first ``times`` times it is called."""

    status: int = 429
    times: int = 1
    message: str | None = None


@dataclass
class Counted:
    """A plan's use counters: how often each fault was injected (for `times` and `next`)."""

    _lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False, kw_only=True
    )
    _used: dict[tuple[str, int, str], int] = field(
        default_factory=dict, repr=False, compare=False, kw_only=True
    )

    def _take(self, counter: tuple[str, int, str], limit: int | None) -> bool:
        """Count one use of ``counter`` unless ``limit`` uses were already counted."""
        with self._lock:
            used = self._used.get(counter, 0)
            if limit is not None and used >= limit:
                return False
            self._used[counter] = used + 1
            return True

    def _first_taken(self, name: str, faults: list[F]) -> F | None:
        """The first of `faults` (each with `times`) not yet used up, counted as used."""
        for i, fault in enumerate(faults):
            if self._take((name, i, ""), fault.times):
                return fault
        return None

    def _matches(
        self, fault: Any, key: str, draw: tuple[object, ...], counter: tuple[str, int, str]
    ) -> bool:
        """Whether a line fault (`keys`, `rate`, `times`) takes this serving of `key`: the
        rate decided by `chance(*draw)`, the times counted under `counter`."""
        if fault.keys is not None and key not in fault.keys:
            return False
        if fault.rate is not None and chance(*draw) >= fault.rate:
            return False
        return fault.times is None or self._take(counter, fault.times)
