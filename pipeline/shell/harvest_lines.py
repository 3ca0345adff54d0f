"""Harvest's line handling: parse and price a results line (in a pool), route lines in
file order (of a key's lines which one wins, which are billed duplicates), and store a
winner's image once (in a second pool). No ledger call here: `harvest` loads the rows this
works from and writes the records it returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.adapters.spool import Span
from pipeline.adapters.storage import ObjectStore
from pipeline.core import naming, policy, pricing, results
from pipeline.core.catalog import ModelInfo
from pipeline.core.errors import ObjectConflict
from pipeline.core.reasons import ReasonCode
from pipeline.core.refimage import reference_metadata
from pipeline.core.values import Usage, nanos_to_decimal_str
from pipeline.shell.context import Context

log = get_logger()
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """One attempt's result, ready to be written."""

    item_id: int
    key: str
    outcome: policy.Outcome
    reason: str | None
    code: ReasonCode | None
    """The reason's code (None for a success): what the policy and the metrics read."""
    usage: Usage
    cost_nanos: int
    standard_nanos: int
    uri: str | None = None
    sha256: str | None = None
    duplicate: int = 0
    """0: the attempt's outcome; n >= 1: the item's nth billed duplicate line in the batch."""
    status: int | None = None
    """The gRPC/HTTP number of a per-line error."""


@dataclass(frozen=True)
class Line:
    """One parsed results line with its price."""

    outcome: results.LineOutcome
    usage: Usage
    cost: int
    standard: int
    billed: bool
    """The line carries usageMetadata (so the service billed it)."""


@dataclass
class KeyState:
    """What a key's lines so far decided: an image line won, or the first line waits."""

    won: bool = False
    first: Line | None = None
    duplicates: int = 0


class LineRouter:
    """What a batch's lines become, one line at a time; `harvest._Harvest` sets the state."""

    ctx: Context
    batch: repo.BatchRow
    run: repo.RunRow
    unstored: str | None
    info: ModelInfo
    store: ObjectStore
    prior: dict[int, dict[str, int]]
    upload_shas: dict[str, str]
    todo: dict[str, Any]
    rows: dict[str, Any]
    keys: dict[str, KeyState]
    gone: set[str]

    def _fresh_lines(self, lines: Iterator[Span]) -> Iterator[Span]:
        for span in lines:
            # bytes() copies: only for the tiny lines
            if span.end - span.start > 2 or bytes(span).strip():
                yield span

    def _parse(self, span: Span) -> Line | None:
        """One results line, classified and priced (in the pool); None when unparsable."""
        try:
            line, payloads = results.parse_line(*span)
        except ValueError:
            log.warning("results_line_unparsable", batch=self.batch.display_name)
            return None
        outcome = results.classify_line(line)
        if outcome.kind == "final" and self.upload_shas:
            outcome = self._file_gone(line, outcome)
        if outcome.image_b64 is not None:
            image = results.payload_bytes(outcome.image_b64, payloads)
            outcome = dataclasses.replace(outcome, image_b64=image)  # type: ignore[arg-type]
        usage = outcome.usage or Usage()
        cost = pricing.cost_nanos(self.info.batch, usage)
        standard = pricing.cost_nanos(self.info.standard, usage)
        return Line(outcome, usage, cost, standard, outcome.usage is not None)

    def _route(self, line: Line, pool: ThreadPoolExecutor) -> list[Future[Record] | Record]:
        """What one line (in file order) becomes (CONTRACT section 10): of a key's lines the
        first with an image wins (if none has one, the first line decides); every other line
        that carries usage is a billed duplicate, recorded beside the attempt, not a try.
        Keys already recorded (a replay) only have their duplicates recorded again, which
        changes nothing."""
        outcome = line.outcome
        key = outcome.key or ""
        row = self.rows.get(key)
        if row is None:
            return []
        state = self.keys.setdefault(key, KeyState())
        out: list[Future[Record] | Record] = []
        if outcome.kind == "succeeded" and not state.won:
            state.won = True
            if state.first is not None:  # the first line lost to this one: a duplicate
                out += self._duplicate(state, state.first)
                state.first = None
            if key in self.todo:
                out.append(self._attempt(line, row, pool))
        elif state.won or state.first is not None:
            out += self._duplicate(state, line)
        else:
            state.first = line  # decides the outcome unless a later line has an image
        return out

    def _attempt(self, line: Line, row: Any, pool: ThreadPoolExecutor) -> Future[Record] | Record:
        outcome = line.outcome
        base = Record(
            row.item_id,
            row.key,
            outcome.kind,
            outcome.reason,
            outcome.code,
            line.usage,
            line.cost,
            line.standard,
            status=outcome.status,
        )
        if self.unstored is not None and outcome.kind in ("succeeded", "retry"):
            return dataclasses.replace(
                base,
                outcome="cancelled",
                reason=self.unstored,
                code=ReasonCode.UNSTORED,
                status=None,
            )
        if outcome.kind != "succeeded":
            return base
        return pool.submit(self._store, base, row, outcome)

    def _duplicate(self, state: KeyState, line: Line) -> list[Record]:
        """A line that lost to another of its key: billed when it carries usage."""
        if not line.billed:
            return []
        state.duplicates += 1
        row = self.rows[line.outcome.key or ""]
        what = "an image" if line.outcome.kind == "succeeded" else (line.outcome.reason or "")
        return [
            Record(
                row.item_id,
                row.key,
                line.outcome.kind,
                f"duplicate line {state.duplicates} for the key (billed): {what}"[:500],
                ReasonCode.DUPLICATE,
                line.usage,
                line.cost,
                line.standard,
                duplicate=state.duplicates,
            )
        ]

    def _undecided(self) -> list[Record]:
        """Keys whose lines had no image: their first line decides the attempt."""
        found: list[Record] = []
        for key, state in self.keys.items():
            if state.first is not None and key in self.todo:
                attempt = self._attempt(state.first, self.rows[key], NO_POOL)
                assert not isinstance(attempt, Future)
                found.append(attempt)
        return found

    def _file_gone(self, line: Any, outcome: results.LineOutcome) -> results.LineOutcome:
        """A line that failed because a reference image it sent is gone or expired is tried
        again (a new batch uploads the image afresh), not failed for good."""
        row = self.todo.get(outcome.key or "")
        if row is None or not row.refs:
            return outcome
        mine = set(row.refs.split(","))
        names = [
            f"files/{file_id}"
            for file_id in sorted(results.files_gone(line))
            if self.upload_shas.get(f"files/{file_id}") in mine
        ]
        if not names:
            return outcome
        self.gone.update(names)
        reason = f"reference image {', '.join(names)} gone or expired ({outcome.reason})"
        return dataclasses.replace(
            outcome, kind="retry", reason=reason[:500], code=ReasonCode.REFERENCE_GONE, status=None
        )

    def _store(self, base: Record, row: Any, outcome: results.LineOutcome) -> Record:
        assert outcome.image_b64 is not None and outcome.mime is not None
        text = outcome.image_b64
        data = results.decode_image(text)
        if isinstance(text, memoryview):
            # A view into one of the spool's 8 MiB blocks: let the block go now, not when the
            # upload returns (16 uploads in flight held 40 MiB of blocks that way).
            text.release()
        sha = hashlib.sha256(data).hexdigest()
        name = naming.object_name(row.key, naming.ext_for_mime(outcome.mime))
        try:
            stored = self.store.put_once(
                name,
                data,
                content_type=outcome.mime,
                metadata=self._metadata(base, row),
                overwrite=self.run.overwrite,
                sha256=sha,
            )
        except ObjectConflict as exc:
            return dataclasses.replace(
                base, outcome="final", reason=str(exc), code=ReasonCode.CONFLICT, status=None
            )
        crashpoint("harvest.stored")
        return dataclasses.replace(base, uri=stored.uri, sha256=sha)

    def _metadata(self, rec: Record, row: Any) -> dict[str, str]:
        prior = self.prior.get(rec.item_id, {})
        total = rec.usage + Usage(
            prior.get("input", 0),
            prior.get("output_image", 0),
            prior.get("output_text", 0),
            prior.get("thinking", 0),
        )
        return {
            "nanobatch-run": self.run.id,
            "nanobatch-key": row.key,
            "nanobatch-model": self.batch.model,
            "nanobatch-prompt-sha256": row.prompt_sha256,
            "nanobatch-input-tokens": str(total.input),
            "nanobatch-output-image-tokens": str(total.output_image),
            "nanobatch-output-text-tokens": str(total.output_text),
            "nanobatch-thinking-tokens": str(total.thinking),
            "nanobatch-cost-usd": nanos_to_decimal_str(rec.cost_nanos + prior.get("cost_nanos", 0)),
            **reference_metadata(row.refs, row.seed),
        }


def ordered(
    pool: ThreadPoolExecutor,
    fn: Callable[[Span], T],
    lines: Iterator[Span],
    window: int,
) -> Iterator[T]:
    """fn over lines in a pool, at most `window` in flight (bounded memory), in input order."""
    inflight: deque[Future[T]] = deque()
    for raw in lines:
        inflight.append(pool.submit(fn, raw))
        if len(inflight) >= window:
            yield inflight.popleft().result()
    while inflight:
        yield inflight.popleft().result()


def ready(entry: Future[Record] | Record) -> bool:
    return not isinstance(entry, Future) or entry.done()


def result(entry: Future[Record] | Record) -> Record:
    return entry.result() if isinstance(entry, Future) else entry


class _NoPool:
    """`_attempt` for a line with no image never submits anything."""

    def submit(self, *args: Any) -> Any:
        raise AssertionError("a line without an image stores nothing")


NO_POOL: Any = _NoPool()


def empty(row: Any, outcome: policy.Outcome, reason: str, code: ReasonCode) -> Record:
    return Record(row.item_id, row.key, outcome, reason, code, Usage(), 0, 0)
