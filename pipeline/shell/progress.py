"""`run`'s live progress on a terminal (stderr a TTY only; nothing changes otherwise).

Owns what the display says and how it is drawn with `rich`: images stored out of items,
failures, cost so far against the estimate, the state of each live batch with its age, and
an estimate of the time left from the turnaround of the run's batches so far. Three parts:
`estimate_left` and `render` are pure (a Snapshot in, numbers or a renderable out),
`snapshot` reads the ledger, and `RunProgress` keeps a `rich.live.Live` up to date. While it
is up, log lines go through the live display's console, so they print above it instead of
tearing it.
"""

from __future__ import annotations

import atexit
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pipeline.core.states import RESERVING_BATCH_STATES
from pipeline.core.values import as_utc, nanos_to_usd
from pipeline.shell.context import Context

MAX_BATCH_ROWS = 8
"""Live batches listed one per line; the rest are counted."""


@dataclass(frozen=True)
class LiveBatch:
    """A batch at the service (or being sent, or finished and not yet harvested)."""

    seq: int
    state: str
    remote_state: str | None
    items: int
    age_s: float | None
    """Seconds since it was submitted; None while it is being sent."""


@dataclass(frozen=True)
class Snapshot:
    """Everything the display shows, read at one moment."""

    run_id: str
    items: int
    stored: int
    failed: int
    cost_usd: float
    estimated_usd: float
    live: tuple[LiveBatch, ...]
    queued_batches: int
    left_s: float | None
    """Estimated seconds left; None until a batch of the run has finished."""


def estimate_left(
    turnarounds: Sequence[float], live_ages: Sequence[float], waves: int
) -> float | None:
    """Seconds left, from the mean turnaround (submitted to finished) of the run's finished
    batches: the live batch with the most time to go on that mean sets when the live ones
    are done (an overdue one counts 0), and each further wave of batches (work not yet at
    the service, as many at once as are live now) takes one more mean turnaround. None
    before any batch finished: there is nothing to go on."""
    if not turnarounds:
        return None
    mean = sum(turnarounds) / len(turnarounds)
    live_left = max((max(mean - age, 0.0) for age in live_ages), default=0.0)
    return live_left + waves * mean


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m05s, 2h07m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render(snap: Snapshot, elapsed_s: float) -> RenderableType:
    """The display for one snapshot: a headline, a bar, and a line per live batch."""
    done = snap.stored + snap.failed
    if snap.items and done >= snap.items:
        left = "done"
    elif snap.left_s is None:
        left = "time left: after the first batch"
    else:
        left = f"~{duration(snap.left_s)} left"
    head = Text.assemble(
        (f"{snap.run_id}  ", "bold"),
        f"{snap.stored}/{snap.items} images stored",
        f", {snap.failed} failed" if snap.failed else "",
        f"  ${snap.cost_usd:.4f} spent of ~${snap.estimated_usd:.4f}",
        f"  {duration(elapsed_s)} elapsed, {left}",
    )
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(snap.items, 1), completed=done, width=60),
        f"{100 * done // max(snap.items, 1)}%",
    )
    table = Table.grid(padding=(0, 2))
    for batch in snap.live[:MAX_BATCH_ROWS]:
        remote = f" ({batch.remote_state})" if batch.remote_state else ""
        age = "sending" if batch.age_s is None else f"{duration(batch.age_s)} at the service"
        table.add_row(f"batch {batch.seq}", f"{batch.state}{remote}", f"{batch.items} items", age)
    rest = len(snap.live) - MAX_BATCH_ROWS
    lines: list[RenderableType] = [head, bar, table]
    if rest > 0:
        lines.append(Text(f"... and {rest} more live batches"))
    if snap.queued_batches:
        lines.append(Text(f"{snap.queued_batches} batches queued (quota, budget or backoff)"))
    return Group(*lines)


def snapshot(ctx: Context, run_id: str, counts: Mapping[str, int]) -> Snapshot:
    """Read the run's numbers and batches from the ledger."""
    now = ctx.now()
    seen = ctx.ledger.run_spend(run_id)
    run, spent, batches = seen.run, seen.spent_nanos, list(seen.batches)
    live = tuple(
        LiveBatch(
            seq=b.seq,
            state=b.state,
            remote_state=b.remote_state,
            items=b.item_count,
            age_s=(now - as_utc(b.submitted_at)).total_seconds() if b.submitted_at else None,
        )
        for b in batches
        if b.state in RESERVING_BATCH_STATES
    )
    turnarounds = [
        (as_utc(b.finished_at) - as_utc(b.submitted_at)).total_seconds()
        for b in batches
        if b.finished_at and b.submitted_at and b.state not in RESERVING_BATCH_STATES
    ]
    queued = sum(1 for b in batches if b.state == "queued")
    unformed = math.ceil(counts.get("queued", 0) / max(run.max_requests_per_batch, 1))
    waves = math.ceil((queued + unformed) / max(len(live), 1))
    ages = [b.age_s or 0.0 for b in live]
    return Snapshot(
        run_id=run_id,
        items=sum(counts.values()),
        stored=counts.get("succeeded", 0),
        failed=counts.get("failed", 0) + counts.get("failed_final", 0),
        cost_usd=nanos_to_usd(spent),
        estimated_usd=nanos_to_usd(run.estimated_nanos),
        live=live,
        queued_batches=queued,
        left_s=estimate_left(turnarounds, ages, waves),
    )


class _View:
    """The live display's renderable: the last snapshot, with elapsed, batch ages and time
    left counting on between ticks (rich redraws it a few times a second)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.snap: Snapshot | None = None
        self.taken = started

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        if self.snap is None:
            return Text("starting...")
        since = now - self.taken
        live = tuple(
            replace(b, age_s=b.age_s + since) if b.age_s is not None else b for b in self.snap.live
        )
        left = None if self.snap.left_s is None else max(self.snap.left_s - since, 0.0)
        return render(replace(self.snap, live=live, left_s=left), now - self.started)


class RunProgress:
    """The progress display of one `run`: `show(counts)` after each tick, `close()` at the
    end (safe to call twice)."""

    def __init__(self, ctx: Context, run_id: str, console: Console | None = None) -> None:
        self.ctx = ctx
        self.run_id = run_id
        self.view = _View(time.monotonic())
        self.live = Live(
            self.view,
            console=console or Console(stderr=True),
            refresh_per_second=2,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self.live.start()
        # On a terminal, start() made sys.stderr a proxy that prints above the display.
        self._undo_logs = _route_logs(sys.stderr)
        # Whatever ends the process (Ctrl-C, an error), the terminal gets its cursor back.
        atexit.register(self.close)

    def show(self, counts: Mapping[str, int]) -> None:
        """Take a new snapshot and draw it."""
        self.view.snap = snapshot(self.ctx, self.run_id, counts)
        self.view.taken = time.monotonic()
        self.live.refresh()

    def close(self) -> None:
        atexit.unregister(self.close)
        if self.live.is_started:
            self.live.stop()
        self._undo_logs()


def _route_logs(stream: Any) -> Callable[[], None]:
    """Send log lines to `stream` (the live console's stderr proxy, which prints them above
    the display); return what puts them back."""
    old_factory = structlog.get_config()["logger_factory"]
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    old_streams = [h.setStream(stream) for h in handlers]
    undone = False

    def undo() -> None:
        nonlocal undone
        if undone:
            return
        undone = True
        structlog.configure(logger_factory=old_factory)
        for handler, old in zip(handlers, old_streams, strict=True):
            if old is not None:
                handler.setStream(old)

    return undo
