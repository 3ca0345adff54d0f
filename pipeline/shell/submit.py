"""Submitting exactly once: record a run (its items already packed into batches, see
`intake`), form batches from items queued later (retries, cache misses), and create them on
the service within quota, budget and backoff.

Batch create is not idempotent, so the intent (state `submitting`, a unique display name)
is committed before the call; a batch found in `submitting` later is reconciled by display
name against the service's list and only created again if none exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipeline.adapters import inputs, shardfile
from pipeline.adapters.drill import crashpoint
from pipeline.adapters.gemini import RemoteBatch
from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.db import session_scope
from pipeline.adapters.ledger.ledger import TableReads
from pipeline.adapters.log import get_logger
from pipeline.adapters.private import make_private_dir, open_private
from pipeline.adapters.references import ReferenceBook
from pipeline.core import expand, pricing, shard
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import (
    ApiError,
    AuthError,
    StaleTransition,
    StorageError,
    TransientApiError,
)
from pipeline.core.reasons import WaitCode, Waiting
from pipeline.core.spec import ChannelSpec, JobSpec, resolve_output_uri, spec_record
from pipeline.core.states import BatchState
from pipeline.core.values import NANOS_PER_USD, as_utc, day_start, usd_to_nanos
from pipeline.shell import intake, location, uploads
from pipeline.shell.context import Context, channel_of
from pipeline.shell.location import Listing
from pipeline.shell.reporting import write_tables
from pipeline.shell.taken import TakenNames

if TYPE_CHECKING:
    from pipeline.shell.holds import Isolation

log = get_logger()
BACKOFF_MAX_S = 1800.0
LIVE_BATCH_LIMIT = 100
#: A dead holder's claim on a batch delays other ticks by at most this (CONTRACT section 6).
CLAIM_TTL_S = 60.0


# ── runs ─────────────────────────────────────────────────────────────────────


def run_identity(spec: JobSpec, input_sha: str, output_template: str, date: str, nonce: str) -> str:
    """Same spec + same input + same resolved output (+ date) = same run."""
    canonical = json.dumps(
        {"spec": spec_record(spec), "input": input_sha, "output": output_template, "date": date},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((canonical + nonce).encode()).hexdigest()


def _spec_json(spec: JobSpec) -> str:
    """The spec as recorded with its run (`runs.spec_json`)."""
    return json.dumps(spec_record(spec), default=str, sort_keys=True)


def latest_active_run(ctx: Context, spec: JobSpec) -> str | None:
    """The newest active run of this spec's identity (same spec, input and date; the output
    template is part of the spec), whether or not it was started with --force: the run
    `run SPEC` resumes. None when there is none."""
    date = ctx.now().strftime("%Y-%m-%d")
    input_sha = inputs.file_sha256(spec.input.path)
    with ctx.engine.connect() as conn:
        found = repo.latest_active_run_like(conn, spec.name, _spec_json(spec), input_sha, date)
    return found.id if found is not None else None


def create_run(
    ctx: Context, spec: JobSpec, catalog: Catalog, *, force: bool = False, use_cache: bool = True
) -> tuple[str, bool]:
    """Record the run, its items and rejects (one transaction), write rejects.csv.

    Returns (run id, created). An existing identical run is returned as is, spending nothing.
    The output location and the service (key and endpoint) are checked first, so a run is
    only recorded when its work can be sent. Items whose image name is taken at the output
    location are recorded failed for good (`taken`). Side effects: ledger rows;
    `rejects.csv` (and, when items failed or the location is shared, the manifest tables)
    in the run's output location.
    """
    now = ctx.now()
    date = now.strftime("%Y-%m-%d")
    input_sha = inputs.file_sha256(spec.input.path)
    nonce = now.isoformat() if force else ""
    identity = run_identity(spec, input_sha, spec.output.uri, date, nonce)
    with ctx.engine.connect() as conn:
        existing = repo.find_run_by_identity(conn, identity)
    if existing is not None:
        return existing.id, False
    run_id = f"{spec.name}-{now.strftime('%Y%m%d')}-{identity[:8]}"
    output_uri = resolve_output_uri(spec.output.uri, job=spec.name, date=date, run=run_id)
    store = ctx.store(output_uri)
    try:
        store.check_writable()
    except StorageError as exc:
        raise StorageError(
            f"{exc}. Nothing was recorded and nothing was spent; submit again once it can be "
            "written."
        ) from exc
    check_service(ctx, spec.channel)
    # Listed before the recording transaction opens: a long listing holds no ledger lock.
    with Listing.of(store) as listing:
        _record_run(
            ctx, spec, catalog, run_id, identity, input_sha, output_uri, date, use_cache, listing
        )
    return run_id, True


def check_service(ctx: Context, channel: ChannelSpec | None = None) -> None:
    """One cheap call to the service before a run is recorded: a refused or missing key
    (AuthError, exit 2) or an unreachable service (exit 1) then leaves nothing behind that a
    later submit would mistake for the run. A Vertex channel's staging prefix must take a
    file too (StorageError, exit 1)."""
    channel = channel or ChannelSpec()
    variable = "GOOGLE_VERTEX_BASE_URL" if channel.is_vertex else "GOOGLE_GEMINI_BASE_URL"
    try:
        ctx.channel_backend(channel).check_access()
    except AuthError as exc:
        raise AuthError(f"{exc}; nothing was recorded", code=exc.code) from None
    except StorageError as exc:
        raise StorageError(
            f"{exc}. Nothing was recorded and nothing was spent; submit again once the "
            "staging prefix can be written."
        ) from None
    except ApiError as exc:
        raise type(exc)(
            f"{exc}; nothing was recorded: check the network and {variable} "
            "(unset it for the real service), then submit again",
            code=exc.code,
        ) from None


def _record_run(
    ctx: Context,
    spec: JobSpec,
    catalog: Catalog,
    run_id: str,
    identity: str,
    input_sha: str,
    output_uri: str,
    date: str,
    use_cache: bool,
    listing: Listing,
) -> None:
    from pipeline.shell.planning import expansion, nothing_to_do

    info = catalog.for_channel(spec.channel.kind).get(spec.model)
    now = ctx.now()
    with session_scope(ctx.engine) as session:
        conn = session.connection()
        repo.insert_run(
            conn,
            _run_values(spec, run_id, identity, input_sha, output_uri, date, now, use_cache),
        )
        taken = None
        if not spec.output.overwrite:
            neighbours = location.runs_at(ctx, conn, output_uri)
            taken = TakenNames(run_id, ctx.store(output_uri), listing, neighbours)
        book = None
        if spec.input.images:
            book = ReferenceBook(spec.source.parent, gcs=uploads.gcs_opener(ctx))
        done = intake.record_expansion(
            conn,
            run_id,
            spec,
            expansion(spec, info, book),
            now,
            use_cache=use_cache,
            spool=ctx.settings.spool_dir,
            taken=taken,
        )
        if done.items == 0:  # raised inside the transaction: nothing is recorded
            raise nothing_to_do(spec, done.rejects)
        repo.update_run_counts(conn, run_id, done.items, done.rejects, done.est_nanos)
        # Written before the commit: a crash leaves no run, and a rerun rewrites the same files.
        write_tables(
            ctx,
            TableReads(conn),
            repo.get_run(conn, run_id),
            manifest=done.failed > 0,
            rejects=True,
            present=listing.tables,
        )
    log.info(
        "run_created",
        run=run_id,
        items=done.items,
        rejected=done.rejects,
        batches=done.batches,
        name_taken=done.failed,
    )


def _run_values(
    spec: JobSpec,
    run_id: str,
    identity: str,
    input_sha: str,
    output_uri: str,
    date: str,
    now: datetime,
    use_cache: bool,
) -> dict[str, Any]:
    limits = shard.limits_for(spec)
    budget = spec.limits.budget_usd
    return {
        "id": run_id,
        "identity": identity,
        "job": spec.name,
        "state": "active",
        "model": spec.model,
        "fallback_model": spec.fallback_model,
        "spec_path": str(spec.source),
        "spec_json": _spec_json(spec),
        "input_sha256": input_sha,
        "output_uri": output_uri,
        "run_date": date,
        "max_attempts": spec.limits.max_attempts,
        "max_enqueued_tokens": limits.max_tokens,
        "max_requests_per_batch": limits.max_requests,
        "max_batch_bytes": limits.max_bytes,
        "budget_nanos": usd_to_nanos(budget) if budget is not None else None,
        "overwrite": spec.output.overwrite,
        "use_cache": use_cache,
        "created_at": now,
        "channel": spec.channel.to_json(),
        "webhook_url": spec.notify.webhook_url,
    }


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
        with ctx.engine.connect() as conn:
            rows = repo.queued_items(conn, run.id, after, 20_000)
        if not rows:
            return made
        after = rows[-1].id
        if not run.overwrite:
            if taken is None:
                store = ctx.store(run.output_uri)
                listing = stack.enter_context(Listing.of(store))
                with ctx.engine.connect() as conn:
                    neighbours = location.runs_at(ctx, conn, run.output_uri)
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
    with ctx.engine.begin() as conn:
        reasons = taken.among(conn, [r.key for r in rows])
        if reasons:
            failures = [(rows[i].key, reason) for i, reason in sorted(reasons.items())]
            repo.fail_items_for_good(conn, run.id, failures, "queued", ctx.now())
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
            with ctx.engine.begin() as conn:
                repo.create_batch(conn, run, model, items, est_tokens, est_nanos, ctx.now())
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
        with self.ctx.engine.connect() as conn:
            pending = repo.batches_in(conn, ["submitting", "queued"])
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
        with repo.holding_batch(
            ctx.engine, batch.id, owner, ctx.now(), CLAIM_TTL_S, waiting
        ) as held:
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
            with ctx.engine.begin() as conn:
                repo.transition_batch(
                    conn,
                    batch.id,
                    BatchState.QUEUED,
                    BatchState.SUBMITTING,
                    ctx.now(),
                    "create intent",
                    create_tries=batch.create_tries + 1,
                )
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
            with ctx.engine.connect() as conn:
                has_refs = repo.run_has_references(conn, batch.run_id)
            files: dict[str, tuple[str, str]] = {}
            if has_refs:
                run = self._run_of(batch)
                files = uploads.prepare(ctx, batch, run, self._keep(batch)).files
                if not self._has_items(batch):
                    return None
            path = self._build_file(batch, spool, files)
        remote = ctx.backend_for(self._run_of(batch)).upload_jsonl(path, batch.display_name)
        crashpoint("submit.uploaded")
        with ctx.engine.begin() as conn:
            repo.update_batch(conn, batch.id, file_name=remote.name, file_uploaded_at=ctx.now())
        path.unlink(missing_ok=True)
        log.info("batch_uploaded", run=batch.run_id, batch=batch.display_name, file=remote.name)
        return remote.name

    def _keep(self, batch: repo.BatchRow) -> Callable[[], object]:
        """Renew the scheduler lease and this batch's claim."""
        ctx = self.ctx

        def renew() -> None:
            if self.keepalive is not None:
                self.keepalive()
            repo.claim_batch(ctx.engine, batch.id, ctx.settings.worker_id, ctx.now(), CLAIM_TTL_S)

        return renew

    def _has_items(self, batch: repo.BatchRow) -> bool:
        """Whether the batch still has items to send; if not, it is cancelled, never created."""
        ctx = self.ctx
        with ctx.engine.begin() as conn:
            if any(True for _ in repo.batch_request_rows(conn, batch.id, chunk=1)):
                return True
            repo.transition_batch(
                conn,
                batch.id,
                BatchState(batch.state),
                BatchState.CANCELLED,
                ctx.now(),
                "no item left to send (reference images could not be uploaded)",
            )
        return False

    def _build_file(
        self, batch: repo.BatchRow, spool: Path, files: dict[str, tuple[str, str]] | None = None
    ) -> Path:
        """The batch's JSONL, built from its rows in the ledger; `files` gives each reference
        image's (mime type, file uri)."""
        make_private_dir(spool)
        path = shardfile.path_for(spool, batch.display_name)
        info = load_catalog().for_channel(self._channel(batch).kind).get(batch.model)
        with self.ctx.engine.connect() as conn, open_private(path) as out:
            for key, prompt, ratio, size, seed, refs in repo.batch_request_rows(conn, batch.id):
                # What the batch's model accepts (a fallback model may take no size).
                sent = expand.effective_size(info, size)
                parts = [files[sha] for sha in refs.split(",")] if refs and files else ()
                out.write(expand.request_line(key, prompt, ratio, sent, parts, seed))
        return path

    def _adopt(self, batch: repo.BatchRow, remote: RemoteBatch, how: str) -> None:
        ctx = self.ctx
        with ctx.engine.begin() as conn:
            repo.transition_batch(
                conn,
                batch.id,
                BatchState.SUBMITTING,
                BatchState.RUNNING,
                ctx.now(),
                how,
                remote_name=remote.name,
                remote_state=remote.state,
                submitted_at=ctx.now(),
                not_before=None,
                last_error=None,
            )
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
        with ctx.engine.begin() as conn:
            repo.update_batch(
                conn,
                batch.id,
                not_before=ctx.now() + timedelta(seconds=delay),
                last_error=error[:500],
            )
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
        with ctx.engine.begin() as conn:
            if exc.code in (403, 404) and batch.create_tries < 5:
                repo.update_batch(conn, batch.id, file_name=None, last_error=str(exc)[:500])
                log.warning("batch_input_reupload", batch=batch.display_name, error=str(exc)[:200])
                return
            from pipeline.shell.harvest import fail_batch_items

            repo.transition_batch(
                conn,
                batch.id,
                BatchState.SUBMITTING,
                BatchState.FAILED,
                ctx.now(),
                f"create refused: {exc}"[:500],
                last_error=str(exc)[:500],
            )
            fail_batch_items(ctx, conn, batch, f"batch create refused: {exc}"[:500])
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
            with self.ctx.engine.connect() as conn:
                self.runs[batch.run_id] = repo.get_run(conn, batch.run_id)
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


class SpendBook:
    """Spent + reserved nano-dollars per run and for the day, for one submission pass.

    Summing recorded costs reads every attempt of a run's finished batches (or of the day),
    so a pass over a hundred queued batches of a million-item run must not do it per batch.
    Each sum is read at most once per REFRESH_S and moved by the reservations this pass makes
    itself: the scheduler lease keeps other ticks from creating batches meanwhile, and their
    harvests only turn reservations into recorded costs."""

    REFRESH_S = 10.0

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._sums: dict[str, tuple[datetime, int, int]] = {}

    def run(self, conn: Any, run_id: str) -> tuple[int, int]:
        return self._read(f"run:{run_id}", lambda: repo.run_spend(conn, run_id))

    def day(self, conn: Any, day_start: datetime) -> tuple[int, int]:
        return self._read(f"day:{day_start:%Y-%m-%d}", lambda: repo.day_spend(conn, day_start))

    def reserved(self, run_id: str, nanos: int) -> None:
        """This pass created a batch estimated at `nanos`: count it until the next read."""
        for name in (f"run:{run_id}", *(n for n in self._sums if n.startswith("day:"))):
            if name in self._sums:
                at, spent, held = self._sums[name]
                self._sums[name] = (at, spent, held + nanos)

    def _read(self, name: str, read: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        now = self.ctx.now()
        found = self._sums.get(name)
        if found is None or (now - found[0]).total_seconds() > self.REFRESH_S:
            spent, held = read()
            found = self._sums[name] = (now, spent, held)
        return found[1], found[2]


def waiting_reason(
    ctx: Context, batch: repo.BatchRow, run: repo.RunRow, spend: SpendBook | None = None
) -> Waiting | None:
    """Why a queued batch cannot be created now (its code and the line `status` shows), or
    None when it can."""
    now = ctx.now()
    if batch.not_before is not None and as_utc(batch.not_before) > now:
        until = as_utc(batch.not_before)
        return Waiting(
            WaitCode.BACKOFF,
            f"batch create backing off until {until:%H:%M:%S} UTC ({batch.last_error})",
        )
    with ctx.engine.connect() as conn:
        limit = ctx.settings.max_live_batches or LIVE_BATCH_LIMIT
        vertex = run.channel is not None
        if repo.live_batch_count(conn, vertex) >= limit:
            return Waiting(WaitCode.LIVE_LIMIT, f"{limit} batches are live (the service's limit)")
        # Vertex AI batch prediction has no enqueued-token quota.
        used = 0 if vertex else repo.live_tokens(conn, batch.model)
        if used and used + batch.est_tokens > run.max_enqueued_tokens:
            return Waiting(
                WaitCode.QUOTA,
                f"enqueued-token quota: {used:,} of {run.max_enqueued_tokens:,} tokens of "
                f"{batch.model} in live batches",
            )
        return _budget_reason(ctx, conn, batch, run, spend or SpendBook(ctx))


def _budget_reason(
    ctx: Context, conn: Any, batch: repo.BatchRow, run: repo.RunRow, spend: SpendBook
) -> Waiting | None:
    now = ctx.now()
    if run.budget_nanos is not None:
        spent, reserved = spend.run(conn, run.id)
        needed = spent + reserved + batch.est_nanos
        if needed > run.budget_nanos:
            # Raised for this run in the ledger: a new budget_usd in the spec is a new run.
            at_least = math.ceil(needed / (NANOS_PER_USD // 100)) / 100
            return Waiting(
                WaitCode.RUN_BUDGET,
                f"run budget: spent ${_usd(spent)}, reserved ${_usd(reserved)}, "
                f"next batch ~${_usd(batch.est_nanos)}, cap ${_usd(run.budget_nanos)}; "
                f"raise it with `nanobatch budget {run.id} --usd X` "
                f"(X >= {at_least:.2f} lets the next batch go)",
            )
    cap = ctx.settings.daily_budget_usd
    if cap is not None:
        spent, reserved = spend.day(conn, day_start(now))
        cap_nanos = usd_to_nanos(cap)
        if spent + reserved + batch.est_nanos > cap_nanos:
            return Waiting(
                WaitCode.DAILY_BUDGET,
                f"daily budget: spent ${spent / NANOS_PER_USD:.4f} today, reserved "
                f"${reserved / NANOS_PER_USD:.4f}, cap ${cap} (NANOBATCH_DAILY_BUDGET_USD; "
                "work goes on after midnight UTC or under a higher cap)",
            )
    return None


def _usd(nanos: int) -> str:
    return f"{nanos / NANOS_PER_USD:.4f}"
