"""A live `listen` in this process (uvicorn in a thread on a free port) for the webhook
tests, over a Drill's ledger and emulator; and a ledger dump to look for secrets in."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from faults_helpers import API_KEY, Drill

from pipeline.adapters.config import Settings
from pipeline.adapters.ledger import db
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.core.catalog import load_catalog
from pipeline.shell.context import Context
from pipeline.shell.listen import Receiver, bind, build_receiver, make_app, make_server

PATH = "/gemini-webhook"


@dataclass
class Live:
    url: str
    base: str
    receiver: Receiver
    ctx: Context


def context(drill: Drill, secrets: tuple[str, ...] = ()) -> Context:
    settings = Settings(
        database_url=drill.db_url,
        api_key=API_KEY,
        base_url=drill.emu.url,
        log_format="json",
        state_dir=drill.tmp / "state",
        webhook_secrets=secrets,
        worker_id=f"listen-test-{time.monotonic_ns()}",
    )
    engine = db.make_engine(drill.db_url)
    db.ensure_schema(engine)
    return Context(settings=settings, ledger=Ledger(engine))


@contextmanager
def live_listen(drill: Drill, secrets: tuple[str, ...] = (), **kw: Any) -> Iterator[Live]:
    """`listen` on 127.0.0.1:<free port> until the block ends."""
    ctx = context(drill, secrets)
    receiver = build_receiver(ctx, load_catalog(), **kw)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(make_app(receiver, PATH))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "listen did not start"
    base = f"http://127.0.0.1:{port}"
    try:
        yield Live(base + PATH, base, receiver, ctx)
    finally:
        server.should_exit = True
        thread.join(timeout=40)
        sock.close()
        ctx.ledger.engine.dispose()


def ledger_text(db_url: str) -> str:
    """Every row of every table of the ledger, as text."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            names = sa.inspect(conn).get_table_names()
            return "\n".join(
                repr(tuple(row))
                for name in names
                for row in conn.execute(sa.text(f"SELECT * FROM {name}"))
            )
    finally:
        engine.dispose()


def wait_for(predicate: Any, timeout: float = 30.0, every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (then return it) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)
