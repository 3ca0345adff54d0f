"""Runs are isolated (CONTRACT section 6, DESIGN "Isolation"): in a tick each run's work is
its own unit. An error the run owns (`policy.hold_reason`: its storage, its input, its batch
files) holds that run and ends its unit, and the tick goes on with the other runs; an error
that is not a run's own (the ledger, the spool disk, the key, a bug) is the step's and fails
the tick. A throttling or unreachable service is the step's too, but is raised only after
every run has had its turn.

A hold is a reason code, a one-line detail, and a time before which no tick tries the run
again (`hold_not_before`: doubling from a minute to at most 30 minutes, with jitter), in the
ledger's `runs` row. Until then the run's batches are still polled and their results
downloaded to the spool, but nothing is stored, formed or created for it. Then a tick tries
it again, a storage hold with a probe of its output location first; a try whose unit goes
through clears the hold. `cancel` ends a held run: its hold stays recorded, and its results
are recorded without storing (`harvest.harvest_batch(unstored=...)`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger, mask_text
from pipeline.core import policy
from pipeline.core.errors import TransientApiError
from pipeline.core.values import as_utc
from pipeline.shell.context import Context

log = get_logger()
DETAIL_CHARS = 500


def detail_of(exc: BaseException) -> str:
    """The error as one line for `status` (no secrets, bounded)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return mask_text(text)[:DETAIL_CHARS]


def is_held(run: repo.RunRow) -> bool:
    return run.hold_reason is not None


class Isolation:
    """One tick's bookkeeping of held runs: which may use their storage now, which this tick
    held, which it tried again; and the first transient service error, raised at the end."""

    def __init__(self, ctx: Context, rng: random.Random | None = None) -> None:
        self.ctx = ctx
        self.rng = rng or random.Random()
        self.held: dict[str, policy.HoldReason] = {}
        self.retried: set[str] = set()
        self.manifests: set[str] = set()
        """Runs whose manifest this tick wrote."""
        self._ready: dict[str, bool] = {}
        self._deferred: TransientApiError | None = None

    def ready(self, run: repo.RunRow) -> bool:
        """Whether the run's unit may store, form and create now: it is not held, or it is
        active and its backoff has passed (and, for a storage hold, its output answers)."""
        if run.id in self.held:
            return False
        if run.id not in self._ready:
            self._ready[run.id] = self._try_again(run) if is_held(run) else True
        return self._ready[run.id] and run.id not in self.held

    def still_held(self, run: repo.RunRow) -> bool:
        """Held at the start of the tick and not cleared, or held during it."""
        return run.id in self.held or (is_held(run) and run.id not in self._cleared())

    def _try_again(self, run: repo.RunRow) -> bool:
        if run.state != "active" or run.hold_not_before is None:
            return False
        if as_utc(run.hold_not_before) > self.ctx.now():
            return False
        self.retried.add(run.id)
        log.info("run_hold_retry", run=run.id, reason=run.hold_reason, tries=run.hold_tries)
        if run.hold_reason == policy.HoldReason.STORAGE:
            with self.unit(run):
                self.ctx.store(run.output_uri).check_writable()
        return run.id not in self.held

    @contextmanager
    def unit(self, run: repo.RunRow) -> Iterator[None]:
        """Run's work: an error it owns holds it (and ends the block); a transient service
        error is kept for the end of the tick; anything else propagates."""
        try:
            yield
        except Exception as exc:
            reason = policy.hold_reason(exc)
            if reason is not None:
                self._hold(run, reason, exc)
            elif isinstance(exc, TransientApiError):
                log.warning("run_step_transient", run=run.id, error=detail_of(exc)[:300])
                self._deferred = self._deferred or exc
            else:
                raise

    def _hold(self, run: repo.RunRow, reason: policy.HoldReason, exc: BaseException) -> None:
        self.held[run.id] = reason
        detail = detail_of(exc)
        jitter = self.rng.random()
        until = self.ctx.ledger.hold_run(
            run.id,
            reason.value,
            detail,
            self.ctx.now(),
            lambda tries: policy.hold_delay(tries, jitter),
        )
        if until is None:  # cancelled meanwhile, or another tick recorded this try
            log.warning("run_unit_failed", run=run.id, reason=reason.value, error=detail)
            return
        log.warning(
            "run_held", run=run.id, reason=reason.value, error=detail, retry_after=until.isoformat()
        )

    def _cleared(self) -> set[str]:
        return self.retried - self.held.keys()

    def release(self) -> list[str]:
        """Clear the holds of the runs tried again whose work went through; their ids."""
        released = []
        for run_id in sorted(self._cleared()):
            if self.ctx.ledger.release_hold(run_id, self.ctx.now()):
                released.append(run_id)
                log.info("run_hold_cleared", run=run_id)
        return released

    def raise_deferred(self) -> None:
        """The first transient service error of the tick, if any: the step did not fully
        work, though every run had its turn."""
        if self._deferred is not None:
            raise self._deferred
