"""The faults of the emulator's Vertex AI batch prediction routes (`FaultPlan.vertex`).

- ``create_errors``: create answers ``status`` (429, 503, ...) the first ``times`` times.
- ``lost_creates``: the next N creates take effect, but their answer is lost (the
  connection closes without one), as when a network drops a reply.
- ``job_faults``: a job ends in ``state`` (PARTIALLY_SUCCEEDED, FAILED, CANCELLED or EXPIRED)
  with its first ``keep`` lines (a count, or a share when below 1) written as output.
- ``line_errors``: a line gets the non-empty ``status`` text and no response.
- ``missing``: a line is left out of the output.
- ``duplicates``: more lines for one key: ``extra`` lists each one's kind (``image``: a
  different image, billed; ``text``: a response with no image, billed; ``error``: a status
  error, not billed), placed ``after`` the line, ``before`` it, or at the ``end`` of the
  output (in the last file).
- ``files``: spread the output over this many files (predictions_0001.jsonl, ...).

Lines match by ``keys`` and/or ``rate`` (all lines when neither is given); ``times`` limits
a line fault to the first N servings of each key. Choices are reproducible: rates are
decided by hashing the seed with the key, never by a random generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.emulator.fault_base import Counted, HttpFault, check_keys

JOB_END_STATES = ("PARTIALLY_SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
EXTRA_KINDS = ("image", "text", "error")
PLACES = ("after", "before", "end")


@dataclass
class JobFault:
    """End matching jobs in ``state`` with their first ``keep`` lines as output."""

    state: str = "PARTIALLY_SUCCEEDED"
    keep: float = 0.5
    next: int = 0
    display_name_contains: str | None = None

    def __post_init__(self) -> None:
        name = self.state.upper().removeprefix("JOB_STATE_")
        if name not in JOB_END_STATES:
            raise ValueError(f"vertex job fault state must be one of {JOB_END_STATES}")
        self.state = f"JOB_STATE_{name}"

    def kept(self, lines: int) -> int:
        """How many of ``lines`` input lines are written."""
        if self.keep < 1:
            return int(lines * self.keep)
        return min(lines, int(self.keep))


@dataclass
class LineMatch:
    keys: list[str] | None = None
    rate: float | None = None
    times: int | None = None


@dataclass
class LineError(LineMatch):
    status: str = "Internal error encountered."


@dataclass
class Duplicate(LineMatch):
    extra: list[str] = field(default_factory=lambda: ["image"])
    where: str = "after"

    def __post_init__(self) -> None:
        bad = [k for k in self.extra if k not in EXTRA_KINDS]
        if bad or self.where not in PLACES:
            raise ValueError(f"duplicate extra must be of {EXTRA_KINDS}, where one of {PLACES}")


@dataclass
class VertexFaults(Counted):
    seed: int = 0
    create_errors: list[HttpFault] = field(default_factory=list)
    lost_creates: int = 0
    job_faults: list[JobFault] = field(default_factory=list)
    line_errors: list[LineError] = field(default_factory=list)
    missing: list[LineMatch] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    files: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VertexFaults:
        check_keys(cls, d, "vertex fault")
        return cls(
            seed=int(d.get("seed", 0)),
            create_errors=[HttpFault(**x) for x in d.get("create_errors", [])],
            lost_creates=int(d.get("lost_creates", 0)),
            job_faults=[JobFault(**x) for x in d.get("job_faults", [])],
            line_errors=[LineError(**x) for x in d.get("line_errors", [])],
            missing=[LineMatch(**x) for x in d.get("missing", [])],
            duplicates=[Duplicate(**x) for x in d.get("duplicates", [])],
            files=max(1, int(d.get("files", 1))),
        )

    def create_error(self) -> HttpFault | None:
        return self._first_taken("create", self.create_errors)

    def lose_create(self) -> bool:
        return self.lost_creates > 0 and self._take(("lost", 0, ""), self.lost_creates)

    def job_fault(self, display_name: str) -> JobFault | None:
        for i, fault in enumerate(self.job_faults):
            if fault.next > 0 and self._take(("job-next", i, ""), fault.next):
                return fault
            sub = fault.display_name_contains
            if sub is not None and sub in display_name:
                return fault
        return None

    def _line(self, kind: str, faults: list[Any], key: str) -> Any:
        for i, fault in enumerate(faults):
            if self._matches(fault, key, (self.seed, kind, i, key), (kind, i, key)):
                return fault
        return None

    def line_error(self, key: str) -> LineError | None:
        found: LineError | None = self._line("error", self.line_errors, key)
        return found

    def is_missing(self, key: str) -> bool:
        return self._line("missing", self.missing, key) is not None

    def duplicate(self, key: str) -> Duplicate | None:
        found: Duplicate | None = self._line("dup", self.duplicates, key)
        return found
