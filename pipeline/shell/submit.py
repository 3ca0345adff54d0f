"""Submitting exactly once: form batches from items queued after their run was recorded
(retries, cache misses; a new run's items are packed as it is recorded, see `intake`), and
create them on the service within quota, budget and backoff (`budget`).

Batch create is not idempotent, so the intent (state `submitting`, a unique display name)
is committed before the call; a batch found in `submitting` later is reconciled by display
name against the service's list and only created again if none exists.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipeline.adapters import shardfile
from pipeline.adapters.backend import RemoteBatch
from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.adapters.private import make_private_dir, open_private
from pipeline.core import expand, pricing, shard
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import ApiError, AuthError, StaleTransition, TransientApiError
from pipeline.core.reasons import WaitCode, Waiting
from pipeline.core.spec import ChannelSpec
from pipeline.core.values import as_utc
from pipeline.shell import location, uploads
from pipeline.shell.budget import SpendBook, waiting_reason
from pipeline.shell.context import Context, channel_of
from pipeline.shell.location import Listing
from pipeline.shell.taken import TakenNames

if TYPE_CHECKING:
    from pipeline.shell.holds import Isolation

log = get_logger()
BACKOFF_MAX_S = 1800.0
#: A dead holder's claim on a batch delays other ticks by at most this (CONTRACT section 6).
CLAIM_TTL_S = 60.0


# ── forming batches ──────────────────────────────────────────────────────────


def form_batches(ctx: Context, run: repo.RunRow, catalog: Catalog) -> int:
    """Pack the run's queued items into queued batches (per model). Returns batches made.

    Queued items whose image name is taken at the output location fail for good first
    (`taken`; the location is listed once per call, and only when items are queued)."""
    with contextlib.ExitStack() as stack:
        return _form_batches(ctx, run, catalog, stack)


def _form_batches(
    ctx: Context, run: repo.RunRow, catalog: Catalog, stack: contextlib.ExitStack
) -> int:
    made = 0
    limits = shard.ShardLimits(
        run.max_requests_per_batch, run.max_batch_bytes, run.max_enqueued_tokens
    )
    after = 0
    taken: TakenNames | None = None
    while True:
        rows = ctx.ledger.queued_items(run.id, after, 20_000)
        if not rows:
            return made
        after = rows[-1].id
        if not run.overwrite:
            if taken is None:
                store = ctx.store(run.output_uri)
                listing = stack.enter_context(Listing.of(store))
                neighbours = location.runs_sharing(ctx, run.output_uri)
                taken = TakenNames(run.id, store, listing, neighbours)
            rows = _drop_taken(ctx, run, taken, rows)
        by_model: dict[str, list[Any]] = {}
        for row in rows:
            by_model.setdefault(row.model, []).append(row)
        for model, model_rows in by_model.items():
            made += _pack_model(ctx, run, catalog, model, model_rows, limits)


def _drop_taken(ctx: Context, run: repo.RunRow, taken: TakenNames, rows: list[Any]) -> list[Any]:
    """Queued items whose name is taken fail for good, before anything is sent for them;
    returns the others."""
    if taken.idle:
        return rows
    keys = [r.key for r in rows]
    reasons = ctx.ledger.fail_taken(
        run.id, keys, lambda open_keys: taken.among_with(open_keys, keys), "queued", ctx.now()
    )
    if not reasons:
        return rows
    log.warning("items_name_taken", run=run.id, items=len(reasons))
    return [row for i, row in enumerate(rows) if i not in reasons]


class _Queued(NamedTuple):
    """A queued item as its batch's model will get it."""

    row: Any
    size: str
    """The imageSize to send: what the model accepts (see `expand.effective_size`)."""
    estimate: pricing.Estimate

    def line_length(self) -> int:
        r = self.row
        files = [("image/jpeg", expand.PLACEHOLDER_URI)] * _ref_count(r.refs)
        return len(expand.request_line(r.key, r.prompt, r.aspect_ratio, self.size, files, r.seed))


def _ref_count(refs: str | None) -> int:
    """How many reference images an item's `refs` (comma-separated sha256s) names."""
    return refs.count(",") + 1 if refs else 0


def _pack_model(
    ctx: Context, run: repo.RunRow, catalog: Catalog, model: str, rows: list[Any], limits: Any
) -> int:
    info = catalog.for_channel(channel_of(run).kind).get(model)
    estimate = pricing.Estimator(info)
    # Items moved to the fallback model keep the size asked of the primary: send (and
    # estimate) what this batch's model accepts, e.g. no imageSize for gemini-2.5-flash-image.
    queued = []
    for row in rows:
        size = expand.effective_size(info, row.image_size)
        queued.append(_Queued(row, size, estimate(size, row.prompt, _ref_count(row.refs))))
    made = 0
    for group in shard.pack(
        queued, size=_Queued.line_length, tokens=lambda q: q.estimate.tokens, limits=limits
    ):
        est_tokens = sum(q.estimate.tokens for q in group)
        est_nanos = sum(q.estimate.batch_nanos for q in group)
        items = [q.row for q in group]
        try:
            ctx.ledger.create_batch(run, model, items, est_tokens, est_nanos, ctx.now())
        except StaleTransition:
            return made  # another tick is forming this run's batches
        made += 1
    return made


# ── creating batches on the service ──────────────────────────────────────────


class Submitter:
    """One tick's submission pass: reconcile `submitting` batches, then create queued ones
    while the live-batch limit, the enqueued-token quota, budgets and backoff allow."""

    def __init__(
        self,
        ctx: Context,
        isolation: Isolation | None = None,
        keepalive: Callable[[], object] | None = None,
    ) -> None:
        self.ctx = ctx
        self._remote_by_display: dict[str | None, dict[str, RemoteBatch]] = {}
        self.spend = SpendBook(ctx)
        self.isolation = isolation
        self.runs: dict[str, repo.RunRow] = {}
        self.keepalive = keepalive
        """Renews the caller's scheduler lease during long work (many image uploads)."""

    def run(self, runs: dict[str, repo.RunRow]) -> int:
        """Create what may be created; with an Isolation, each batch's upload and create is
        its run's unit (a held run is skipped; a run whose files fail is held)."""
        self.runs = dict(runs)
        created = 0
        pending = self.ctx.ledger.batches_in(["submitting", "queued"])
        for batch in sorted(pending, key=lambda b: (b.state != "submitting", b.id)):
            run = runs.get(batch.run_id)
            if run is None or run.state != "active":
                continue
            iso = self.isolation
            if iso is not None and not iso.ready(run):
                continue
            if self._waiting_reason(batch, run) is not None:
                continue
            with iso.unit(run) if iso is not None else nullcontext():
                created += self._submit_one(batch, run)
        return created

    def _waiting_reason(self, batch: repo.BatchRow, run: repo.RunRow) -> Waiting | None:
        """A `submitting` batch already counts as live: only its backoff can hold it."""
        if batch.state != "submitting":
            return waiting_reason(self.ctx, batch, run, self.spend)
        backing_off = batch.not_before is not None and as_utc(batch.not_before) > self.ctx.now()
        return Waiting(WaitCode.BACKOFF, "backoff") if backing_off else None

    def _submit_one(self, batch: repo.BatchRow, run: repo.RunRow) -> bool:
        ctx = self.ctx
        waiting = ("queued", "submitting")
        owner = ctx.settings.worker_id
        with ctx.ledger.holding_batch(batch.id, owner, ctx.now(), CLAIM_TTL_S, waiting) as held:
            return held is not None and self._create(held, run)

    def _create(self, batch: repo.BatchRow, run: repo.RunRow) -> bool:
        ctx = self.ctx
        if batch.state == "submitting":
            found = self._find_remote(run, batch.display_name)
            if found is not None:
                self._adopt(batch, found, "reconciled by display name")
                return True
        file_name = batch.file_name or self._upload(batch)
        if file_name is None:
            return False
        if batch.state == "queued":
            ctx.ledger.batch_intent(batch, ctx.now())
            self.spend.reserved(run.id, batch.est_nanos)  # submitting counts as reserved
        crashpoint("submit.intent")
        try:
            remote = ctx.backend_for(run).create_batch(
                batch.model, file_name, batch.display_name, **_webhook(run, batch)
            )
        except AuthError:
            raise
        except TransientApiError as exc:
            self._back_off(batch, str(exc))
            return False
        except ApiError as exc:
            self._create_refused(batch, exc)
            return False
        crashpoint("submit.created")
        self._adopt(batch, remote, "created")
        return True

    def _upload(self, batch: repo.BatchRow) -> str | None:
        """The batch's request file uploaded (its reference images first); None when none of
        its items can be sent any more (the batch is then cancelled)."""
        ctx = self.ctx
        spool = ctx.settings.spool_dir
        path = shardfile.written(spool, batch.display_name, batch.shard_sha256)
        if path is None:  # not written when the run was recorded, or changed since
            has_refs = ctx.ledger.run_has_references(batch.run_id)
            files: dict[str, tuple[str, str]] = {}
            if has_refs:
                run = self._run_of(batch)
                files = uploads.prepare(ctx, batch, run, self._keep(batch)).files
                if not self._has_items(batch):
                    return None
            path = self._build_file(batch, spool, files)
        remote = ctx.backend_for(self._run_of(batch)).upload_jsonl(path, batch.display_name)
        crashpoint("submit.uploaded")
        ctx.ledger.batch_uploaded(batch.id, remote.name, ctx.now())
        path.unlink(missing_ok=True)
        log.info("batch_uploaded", run=batch.run_id, batch=batch.display_name, file=remote.name)
        return remote.name

    def _keep(self, batch: repo.BatchRow) -> Callable[[], object]:
        """Renew the scheduler lease and this batch's claim."""
        ctx = self.ctx

        def renew() -> None:
            if self.keepalive is not None:
                self.keepalive()
            ctx.ledger.claim_batch(batch.id, ctx.settings.worker_id, ctx.now(), CLAIM_TTL_S)

        return renew

    def _has_items(self, batch: repo.BatchRow) -> bool:
        """Whether the batch still has items to send; if not, it is cancelled, never created."""
        return self.ctx.ledger.keep_or_cancel(
            batch, self.ctx.now(), "no item left to send (reference images could not be uploaded)"
        )

    def _build_file(
        self, batch: repo.BatchRow, spool: Path, files: dict[str, tuple[str, str]] | None = None
    ) -> Path:
        """The batch's JSONL, built from its rows in the ledger; `files` gives each reference
        image's (mime type, file uri)."""
        make_private_dir(spool)
        path = shardfile.path_for(spool, batch.display_name)
        info = load_catalog().for_channel(self._channel(batch).kind).get(batch.model)
        rows = self.ctx.ledger.batch_request_rows(batch.id)
        with contextlib.closing(rows), open_private(path) as out:
            for key, prompt, ratio, size, seed, refs in rows:
                # What the batch's model accepts (a fallback model may take no size).
                sent = expand.effective_size(info, size)
                parts = [files[sha] for sha in refs.split(",")] if refs and files else ()
                out.write(expand.request_line(key, prompt, ratio, sent, parts, seed))
        return path

    def _adopt(self, batch: repo.BatchRow, remote: RemoteBatch, how: str) -> None:
        ctx = self.ctx
        ctx.ledger.batch_submitted(batch.id, remote.name, remote.state, ctx.now(), how)
        log.info(
            "batch_submitted",
            run=batch.run_id,
            batch=batch.display_name,
            remote=remote.name,
            items=batch.item_count,
            how=how,
        )

    def _back_off(self, batch: repo.BatchRow, error: str) -> None:
        ctx = self.ctx
        tries = max(batch.create_tries, 1)
        delay = min(ctx.settings.create_backoff_s * 2 ** (tries - 1), BACKOFF_MAX_S)
        delay *= random.uniform(0.5, 1.5)
        ctx.ledger.batch_backoff(batch.id, ctx.now() + timedelta(seconds=delay), error)
        log.warning(
            "batch_create_backoff",
            run=batch.run_id,
            batch=batch.display_name,
            error=error[:200],
            retry_in_s=round(delay, 1),
        )

    def _create_refused(self, batch: repo.BatchRow, exc: ApiError) -> None:
        """A 4xx at create: a missing/expired input file is uploaded again; else give up."""
        ctx = self.ctx
        if exc.code in (403, 404) and batch.create_tries < 5:
            ctx.ledger.batch_input_gone(batch.id, str(exc))
            log.warning("batch_input_reupload", batch=batch.display_name, error=str(exc)[:200])
            return
        ctx.ledger.batch_refused(batch, ctx.now(), str(exc), f"batch create refused: {exc}"[:500])
        log.error("batch_create_refused", batch=batch.display_name, error=str(exc)[:300])

    def _find_remote(self, run: repo.RunRow, display_name: str) -> RemoteBatch | None:
        """The service's batch with this display name, if the create took effect (its answer
        may have been lost): one listing per channel per pass."""
        if run.channel not in self._remote_by_display:
            backend = self.ctx.backend_for(run)
            self._remote_by_display[run.channel] = {
                r.display_name: r for r in backend.list_batches() if r.display_name
            }
        return self._remote_by_display[run.channel].get(display_name)

    def _run_of(self, batch: repo.BatchRow) -> repo.RunRow:
        if batch.run_id not in self.runs:
            self.runs[batch.run_id] = self.ctx.ledger.get_run(batch.run_id)
        return self.runs[batch.run_id]

    def _channel(self, batch: repo.BatchRow) -> ChannelSpec:
        return channel_of(self._run_of(batch))


def _webhook(run: repo.RunRow, batch: repo.BatchRow) -> dict[str, Any]:
    """The create's dynamic webhook, when the run has `[notify] webhook_url`: the URL, with
    the run id and the batch's display name as user_metadata (a backend without webhooks,
    such as Vertex, is never handed one: its specs refuse the key)."""
    if not run.webhook_url:
        return {}
    metadata = {"run": run.id, "batch": batch.display_name}
    return {"webhook": (run.webhook_url, metadata)}
