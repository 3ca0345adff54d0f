"""`nanobatch listen`: receive Gemini API webhooks (CONTRACT section 11) and move the batch
each one names on at once, so a finished batch is harvested in seconds rather than at the
next cron tick; polling by `tick` stays the safety net.

An ASGI app (Starlette, served by uvicorn) with one route, POST on `--path`. A delivery is
verified (`adapters.delivery`), recorded once by its key in the ledger, and acknowledged; the
work happens after the answer, in a few worker threads fed by a bounded queue of batch names.
A full queue never delays an answer nor starts more work: the delivery stays `queued` in the
ledger and a refill loop offers it again once there is room (after a crash, too). Every
refusal is a 4xx (503 when the JWKS cannot be read) and records nothing; counters by reason
are kept in memory and written with `--metrics-out`.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.adapters import delivery
from pipeline.adapters.delivery import BATCH_EVENTS, JwksCache, Refused, Verifier
from pipeline.adapters.log import get_logger, mask_text
from pipeline.core.catalog import Catalog
from pipeline.core.errors import UsageError
from pipeline.shell.context import Context

log = get_logger()
BODY_LIMIT = 1 << 20
"""The largest body accepted: "1 MB" is 2^20 bytes."""
QUEUE_SIZE = 1000
REFILL_S = 2.0
REFILL_AFTER_S = 10.0
"""A queued delivery older than this is offered again (the process that took it may be gone)."""
RETRY_AFTER_S = 30.0
"""A batch whose move failed (the API down) is tried again no sooner than this."""
AUDIENCES_TTL_S = 2.0
DEFAULT_JWKS_BASE = "https://generativelanguage.googleapis.com"

Mover = Callable[[Context, Catalog, str], str]


# ── the receiver: verify, record once, acknowledge, queue ────────────────────


class Receiver:
    """Accepts deliveries and moves their batches on in worker threads."""

    def __init__(
        self,
        ctx: Context,
        catalog: Catalog,
        verifier: Verifier,
        *,
        workers: int = 2,
        queue_size: int = QUEUE_SIZE,
        mover: Mover | None = None,
    ) -> None:
        self.ctx, self.catalog, self.verifier = ctx, catalog, verifier
        self.counters: Counter[str] = Counter()
        self._mover = mover or _default_mover
        self._queue: queue.Queue[str] = queue.Queue(maxsize=queue_size)
        self._waiting: set[str] = set()
        """Batch names in the queue or being moved: offered once at a time."""
        self._retry_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers = workers
        self.refill_s = REFILL_S
        self.refill_after_s = REFILL_AFTER_S

    # -- answering ---------------------------------------------------------------------------

    def accept(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str]]:
        """(status, JSON) for a delivery whose body was read in full. Blocking (ledger)."""
        try:
            found = self.verifier.verify(body, headers)
        except Refused as refusal:
            return self.refuse(refusal)
        state, batch_id, detail = self._triage(found)
        recorded = self.ctx.ledger.record_delivery(
            key=found.key,
            scheme=found.scheme,
            event=found.event or "?",
            batch_name=found.batch,
            state=state,
            now=self.ctx.now(),
            detail=detail,
            batch_id=batch_id,
        )
        if not recorded:
            self._count("duplicate")
            log.info("webhook_duplicate", key=found.key, event_type=found.event, batch=found.batch)
            return 200, {"status": "duplicate"}
        self._count("accepted" if state == "queued" else "ignored")
        log.info(
            "webhook_received",
            key=found.key,
            scheme=found.scheme,
            event_type=found.event,
            batch=found.batch,
            state=state,
            detail=detail,
            batch_id=batch_id,
        )
        if state == "queued" and found.batch:
            self._offer(found.batch)
            return 202, {"status": "accepted"}
        return 200, {"status": "ignored"}

    def _triage(self, found: delivery.Verified) -> tuple[str, int | None, str | None]:
        """(state, our batch id, why ignored): only batch events naming our batches queue."""
        if found.event not in BATCH_EVENTS:
            return "ignored", None, "not a batch event"
        if found.batch is None:
            return "ignored", None, "names no batch"
        batch = self.ctx.ledger.batch_by_remote_name(found.batch)
        if batch is None:
            return "ignored", None, "not a batch of this ledger"
        return "queued", batch.id, None

    def refuse(self, refusal: Refused) -> tuple[int, dict[str, str]]:
        self._count("refused")
        self._count(f"refused:{refusal.reason}")
        log.warning("webhook_refused", reason=refusal.reason, status=refusal.status)
        return refusal.status, {"error": refusal.reason}

    def _count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    # -- the queue and its workers -----------------------------------------------------------

    def _offer(self, batch_name: str) -> bool:
        """Queue a batch without waiting; False when it is already waiting or the queue is full
        (the delivery stays queued in the ledger for the refill loop)."""
        with self._lock:
            if batch_name in self._waiting:
                return True
            try:
                self._queue.put_nowait(batch_name)
            except queue.Full:
                self.counters["queue_full"] += 1
                return False
            self._waiting.add(batch_name)
            return True

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._stop.clear()
        for i in range(self._workers):
            self._spawn(functools.partial(self._work, i), f"listen-worker-{i}")
        self._spawn(self._refill_loop, "listen-refill")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work; a batch being moved is finished (up to `timeout`). What is still
        queued stays queued in the ledger for the next `listen` or the tick."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []

    def _work(self, index: int) -> None:
        # Each worker is its own lease holder: with one owner id, two workers of a process
        # could both pass a batch's lease and harvest it twice.
        settings = self.ctx.settings
        settings = settings.with_overrides(worker_id=f"{settings.worker_id}-w{index}")
        base = self.ctx
        ctx = Context(
            settings=settings,
            ledger=base.ledger,
            backend_factory=base.backend_factory,
            store_factory=base.store_factory,
            clock=base.clock,
            vertex_factory=base.vertex_factory,
        )
        while not self._stop.is_set():
            try:
                name = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._move(ctx, name)
            finally:
                with self._lock:
                    self._waiting.discard(name)

    def _move(self, ctx: Context, name: str) -> None:
        try:
            outcome = self._mover(ctx, self.catalog, name)
        except Exception as exc:  # the API or storage down: the tick or a later try goes on
            self._retry_at[name] = time.monotonic() + RETRY_AFTER_S
            self._count("move_failed")
            log.warning("webhook_move_failed", batch=name, error=mask_text(str(exc))[:300])
            return
        state = "ignored" if outcome == "unknown batch" else "done"
        ctx.ledger.finish_deliveries(name, state, outcome, ctx.now())
        self._count("moved")
        log.info("webhook_batch_moved", batch=name, outcome=outcome)

    def _refill_loop(self) -> None:
        while not self._stop.wait(self.refill_s):
            try:
                self.refill()
            except Exception as exc:  # the ledger unreachable for a moment: try again later
                log.warning("webhook_refill_failed", error=mask_text(str(exc))[:300])

    def refill(self) -> int:
        """Offer queued deliveries older than `refill_after_s` again, as room allows."""
        room = self._queue.maxsize - self._queue.qsize()
        if room <= 0:
            return 0
        rows = self.ctx.ledger.pending_deliveries(room * 4)
        cutoff = self.ctx.now().timestamp() - self.refill_after_s
        offered = 0
        for row in rows:
            name = row.batch_name
            if not name or _timestamp(row.received_at) > cutoff:
                continue
            if self._retry_at.get(name, 0.0) > time.monotonic() or name in self._waiting:
                continue
            if not self._offer(name):
                break
            offered += 1
        return offered


def _timestamp(at: Any) -> float:
    from pipeline.core.values import as_utc

    return float(as_utc(at).timestamp())


def _default_mover(ctx: Context, catalog: Catalog, name: str) -> str:
    from pipeline.shell.tick import move_batch_on

    return move_batch_on(ctx, catalog, name)


# ── building it from settings ────────────────────────────────────────────────


def check_secrets(secrets: tuple[str, ...]) -> None:
    """Each NANOBATCH_WEBHOOK_SECRET entry must be a whsec_ secret (named by position only)."""
    import base64
    import binascii

    for i, secret in enumerate(secrets, 1):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_") + "==", validate=False)
        except (binascii.Error, ValueError):
            key = b""
        if not secret.startswith("whsec_") or not key:
            raise UsageError(
                f"NANOBATCH_WEBHOOK_SECRET: secret {i} of {len(secrets)} is not a whsec_ signing "
                "secret; set it to what `nanobatch webhooks create` printed (several separated "
                "by spaces)"
            )


def build_receiver(
    ctx: Context,
    catalog: Catalog,
    *,
    workers: int = 2,
    queue_size: int = QUEUE_SIZE,
    mover: Mover | None = None,
) -> Receiver:
    """A Receiver with the settings' secrets and the JWKS of the endpoint nanobatch uses."""
    secrets = ctx.settings.webhook_secrets
    check_secrets(secrets)
    verifier = Verifier(secrets, JwksCache(jwks_url(ctx)), _audiences(ctx))
    return Receiver(ctx, catalog, verifier, workers=workers, queue_size=queue_size, mover=mover)


def jwks_url(ctx: Context) -> str:
    """The JWKS of the endpoint nanobatch talks to (GOOGLE_GEMINI_BASE_URL or the service)."""
    return (ctx.settings.base_url or DEFAULT_JWKS_BASE).rstrip("/") + "/.well-known/jwks.json"


def _audiences(ctx: Context) -> Callable[[], set[str]]:
    """The webhook URLs runs were recorded with, read at most every AUDIENCES_TTL_S."""
    cache: dict[str, Any] = {"at": -AUDIENCES_TTL_S, "urls": set()}

    def read() -> set[str]:
        if time.monotonic() - cache["at"] >= AUDIENCES_TTL_S:
            cache["urls"] = ctx.ledger.webhook_urls()
            cache["at"] = time.monotonic()
        return set(cache["urls"])

    return read


# ── HTTP ─────────────────────────────────────────────────────────────────────


def make_app(receiver: Receiver, path: str) -> Starlette:
    """The ASGI app: POST `path` only; any other path or method is refused (404, 405)."""

    async def deliver(request: Request) -> Response:
        try:
            body = await _read_body(request)
        except Refused as refusal:
            status, payload = receiver.refuse(refusal)
            return JSONResponse(payload, status_code=status, headers={"Connection": "close"})
        status, payload = await run_in_threadpool(receiver.accept, body, request.headers)
        return JSONResponse(payload, status_code=status)

    async def elsewhere(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 404
        reason = "method" if code == 405 else "path"
        status, payload = receiver.refuse(Refused(code, reason, f"{request.method} not served"))
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
        return JSONResponse(payload, status_code=status, headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        receiver.start()
        try:
            yield
        finally:
            await run_in_threadpool(receiver.stop)

    app = Starlette(
        routes=[Route(path, deliver, methods=["POST"])],
        exception_handlers={404: elsewhere, 405: elsewhere},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # /path/ is another path, not a redirect (a 3xx)
    return app


async def _read_body(request: Request) -> bytes:
    """The raw body, refused (413) past BODY_LIMIT without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > BODY_LIMIT):
        raise Refused(413, "too_large", f"the body is over {BODY_LIMIT} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_LIMIT:
            raise Refused(413, "too_large", f"the body is over {BODY_LIMIT} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 picks a free one); UsageError when the address is taken."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT or SIGTERM that stopped it gracefully is not
    raised again afterwards (uvicorn does, so the process dies of it): a stopped `listen`
    exits 0, as process managers expect of a clean stop."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def make_server(app: Starlette) -> uvicorn.Server:
    """uvicorn for `app`: our own log lines only, a bounded number of open connections."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_keep_alive=5,
        limit_concurrency=256,
        timeout_graceful_shutdown=30,
    )
    return _Server(config)


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


def listen(
    ctx: Context,
    catalog: Catalog,
    *,
    host: str,
    port: int,
    path: str,
    workers: int,
    metrics_out: Path | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's handlers: in-flight requests finish first)."""
    if not path.startswith("/"):
        raise UsageError(f"--path {path!r} must start with /")
    receiver = build_receiver(ctx, catalog, workers=workers)
    sock = bind(host, port)
    address = Address(host, sock.getsockname()[1], path)
    server = make_server(make_app(receiver, path))
    writer = MetricsWriter(receiver, metrics_out) if metrics_out else None
    if writer is not None:
        writer.start()
    if not ctx.settings.webhook_secrets:
        log.warning(
            "listen_no_secret",
            detail="NANOBATCH_WEBHOOK_SECRET is unset: static (HMAC) deliveries are refused, "
            "dynamic (JWT) ones still checked against the JWKS",
        )
    log.info(
        "listen_started",
        url=address.url,
        secrets=len(ctx.settings.webhook_secrets),
        jwks=jwks_url(ctx),
        workers=workers,
    )
    try:
        server.run(sockets=[sock])
    finally:
        if writer is not None:
            writer.stop()
        sock.close()
        log.info("listen_stopped", **{k.replace(":", "_"): v for k, v in receiver.counters.items()})


class MetricsWriter(threading.Thread):
    """Writes the receiver's counters as Prometheus text every INTERVAL_S and at the end."""

    INTERVAL_S = 15.0

    def __init__(self, receiver: Receiver, out: Path) -> None:
        super().__init__(name="listen-metrics", daemon=True)
        self.receiver, self.out = receiver, out
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.INTERVAL_S):
            self.write()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.write()

    def write(self) -> None:
        from pipeline.shell.metrics import listen_text, write_atomic

        write_atomic(self.out, listen_text(dict(self.receiver.counters), self.receiver.queue_depth))
