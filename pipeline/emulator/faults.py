"""Fault plans: which errors, odd answers and broken downloads the emulator injects, and when.

Every choice is reproducible: rates are decided by hashing the plan's seed with the key (or the
batch's display name and creation ordinal), never by a random generator.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.emulator.fault_base import Counted, HttpFault, chance, check_keys
from pipeline.emulator.vertex_faults import VertexFaults

LINE_KINDS = ("error", "finish", "block", "text_only", "missing")


@dataclass
class BatchFault:
    """End matching batches in ``state`` (FAILED or EXPIRED) with no output.

    A batch matches when it is among the ``next`` batches created from now on, when its display
    name contains ``display_name_contains``, or by ``rate``.
    """

    state: str = "FAILED"
    rate: float | None = None
    display_name_contains: str | None = None
    next: int = 0

    def __post_init__(self) -> None:
        name = self.state.upper().removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
        if name not in ("FAILED", "EXPIRED", "CANCELLED"):
            raise ValueError(f"batch fault state must be FAILED or EXPIRED, not {self.state!r}")
        self.state = f"BATCH_STATE_{name}"


@dataclass
class LineFault:
    """A per-line fault.

    kind: ``error`` (``code``, ``message``), ``finish`` (candidate with finishReason ``reason`` and
    no image), ``block`` (promptFeedback.blockReason ``reason``, no candidates), ``text_only``
    (STOP with one text part), ``missing`` (no output line). Lines match by ``keys`` and/or
    ``rate`` (all lines when neither is given); ``times`` limits it to the first N servings of
    each key, ``count`` to the first N lines overall.
    """

    kind: str = "error"
    code: int = 13
    message: str | None = None
    reason: str = "IMAGE_SAFETY"
    rate: float | None = None
    keys: list[str] | None = None
    times: int | None = None
    count: int | None = None


@dataclass
class DownloadFault:
    """Throttle downloads to ``bytes_per_second``; drop the connection after ``drop_after_bytes``
    bytes the first ``drop_times`` downloads."""

    bytes_per_second: int | None = None
    drop_after_bytes: int | None = None
    drop_times: int = 1


@dataclass
class WebhookFaults:
    """Faults of webhook deliveries: ``duplicates`` extra copies of every message (same
    webhook-id); ``delay_seconds`` (wall clock) before a message's first attempt; ``reorder``:
    messages that come due within ``reorder_window_seconds`` go out newest first;
    ``bad_signature``: the first N attempts carry a signature no secret or key made."""

    duplicates: int = 0
    delay_seconds: float = 0.0
    reorder: bool = False
    reorder_window_seconds: float = 1.0
    bad_signature: int = 0


@dataclass
class FaultPlan(Counted):
    """Every fault the emulator injects. Mutable at run time; counters live in the plan."""

    seed: int = 0
    create_errors: list[HttpFault] = field(default_factory=list)
    get_errors: list[HttpFault] = field(default_factory=list)
    download_errors: list[HttpFault] = field(default_factory=list)
    batch_faults: list[BatchFault] = field(default_factory=list)
    line_faults: list[LineFault] = field(default_factory=list)
    shuffle: bool = False
    download: DownloadFault = field(default_factory=DownloadFault)
    vertex: VertexFaults = field(default_factory=VertexFaults)
    """The Vertex AI batch prediction routes' faults (see `vertex_faults`)."""
    webhooks: WebhookFaults = field(default_factory=WebhookFaults)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultPlan:
        """Build a plan from a dict (the JSON/TOML file's content)."""
        check_keys(cls, d, "fault plan")
        plan = cls(seed=int(d.get("seed", 0)), shuffle=bool(d.get("shuffle", False)))
        for name in ("create_errors", "get_errors", "download_errors"):
            setattr(plan, name, [HttpFault(**x) for x in d.get(name, [])])
        plan.batch_faults = [BatchFault(**x) for x in d.get("batch_faults", [])]
        plan.line_faults = [_line_fault(x) for x in d.get("line_faults", [])]
        plan.download = DownloadFault(**d.get("download", {}))
        plan.vertex = VertexFaults.from_dict(d.get("vertex", {}))
        plan.webhooks = WebhookFaults(**d.get("webhooks", {}))
        return plan

    @classmethod
    def from_file(cls, path: str | Path) -> FaultPlan:
        """Load a plan from a ``.json`` or ``.toml`` file."""
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
        return cls.from_dict(data)

    def http_error(self, endpoint: str) -> HttpFault | None:
        """The injected error for this call of ``endpoint`` (create, get or download), if any."""
        found: HttpFault | None = self._first_taken(endpoint, getattr(self, f"{endpoint}_errors"))
        return found

    def batch_fault(self, display_name: str, ordinal: int) -> str | None:
        """The final state forced on a new batch, if any (decided at create)."""
        for i, fault in enumerate(self.batch_faults):
            if fault.next > 0 and self._take(("batch-next", i, ""), fault.next):
                return fault.state
            sub = fault.display_name_contains
            if sub is not None and sub in display_name:
                return fault.state
            if fault.rate is not None and chance(self.seed, i, display_name, ordinal) < fault.rate:
                return fault.state
        return None

    def line_fault(self, key: str) -> LineFault | None:
        """The fault for this serving of the line with ``key``, if any."""
        for i, fault in enumerate(self.line_faults):
            if not self._matches(fault, key, (self.seed, i, key), ("line", i, key)):
                continue
            if fault.count is not None and not self._take(("line-count", i, ""), fault.count):
                continue
            return fault
        return None

    def spoil_signature(self) -> bool:
        """Whether this webhook attempt gets a bad signature (the first ``bad_signature``)."""
        return self._take(("webhook-bad", 0, ""), self.webhooks.bad_signature)

    def drop_download(self) -> int | None:
        """Bytes after which this download is cut, if it is to be cut."""
        limit = self.download.drop_after_bytes
        if limit is None or not self._take(("drop", 0, ""), self.download.drop_times):
            return None
        return limit


def _line_fault(d: dict[str, Any]) -> LineFault:
    fault = LineFault(**d)
    if fault.kind not in LINE_KINDS:
        raise ValueError(f"unknown line fault kind {fault.kind!r}; expected one of {LINE_KINDS}")
    return fault
