"""Shell logic (recording a run, creating, polling and harvesting batches) on a FakeBackend:
no HTTP, no emulator. The fake is plugged in through the Context's backend factory."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipeline.adapters.config import Settings
from pipeline.adapters.ledger import db, repo
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.adapters.ledger.models import Base
from pipeline.adapters.storage import LocalStore, StoredObject
from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import ApiError, TransientApiError
from pipeline.shell.context import Context
from pipeline.shell.intake import create_run
from pipeline.shell.planning import load_spec
from pipeline.shell.tick import tick
from tests.fakes import FakeBackend, image_line, tiny_png
from tests.specs import write_spec, write_table


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    ctx: Context
    fake: FakeBackend
    clock: Clock
    catalog: Catalog
    out: Path

    def record(self, keys: list[str], per_batch: int = 2) -> str:
        """Record a run of one prompt per key (batches of `per_batch`); returns its id."""
        folder = self.out.parent
        write_table(folder / "prompts.csv", [{"key": k, "prompt": f"a {k}"} for k in keys])
        spec = write_spec(
            folder / "job.toml",
            name="fake-job",
            prompt_column="prompt",
            output=str(self.out),
            limits={"max_attempts": 3, "max_requests_per_batch": per_batch},
        )
        run_id, _ = create_run(
            self.ctx, load_spec(spec, self.catalog), self.catalog, force=True, use_cache=True
        )
        return run_id

    def batches(self, run_id: str) -> list[repo.BatchRow]:
        with self.ctx.ledger.engine.connect() as conn:
            return repo.batches_of_run(conn, run_id)

    def batch_events(self, batch_id: int) -> list[tuple[str | None, str, str | None]]:
        e = repo.EVENTS
        query = (
            select(e.c.from_state, e.c.to_state, e.c.detail)
            .where(e.c.batch_id == batch_id, e.c.item_id.is_(None))
            .order_by(e.c.id)
        )
        with self.ctx.ledger.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query)]  # type: ignore[misc]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    engine = db.make_engine(f"sqlite:///{tmp_path}/ledger.db")
    Base.metadata.create_all(engine)  # the models' schema: faster than running migrations
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/ledger.db",
        state_dir=tmp_path / "state",
        worker_id="fake-test",
        create_backoff_s=10.0,
        harvest_workers=1,
    )
    fake = FakeBackend()
    clock = Clock(datetime(2025, 3, 4, 12, 0, tzinfo=UTC))
    ctx = Context(
        settings=settings, ledger=Ledger(engine), backend_factory=lambda: fake, clock=clock
    )
    yield World(ctx, fake, clock, load_catalog(), tmp_path / "out")
    engine.dispose()


def test_submit_records_the_run_and_creates_its_batches_on_the_fake(world: World) -> None:
    run_id = world.record(["a", "b", "c"])
    assert [b.state for b in world.batches(run_id)] == ["queued", "queued"]
    assert world.fake.calls == [("check_access",)]  # the key is checked; nothing is sent

    result = tick(world.ctx, world.catalog)

    assert result.created == 2
    batches = world.batches(run_id)
    assert [b.state for b in batches] == ["running", "running"]
    assert {b.remote_name for b in batches} == set(world.fake.batches)
    sent = sorted(r["key"] for name in world.fake.batches for r in world.fake.requests(name))
    assert sent == ["a", "b", "c"]
    assert world.batch_events(batches[0].id)[-2:] == [
        ("queued", "submitting", "create intent"),
        ("submitting", "running", "created"),
    ]


def test_a_create_answering_429_backs_off_then_creates(world: World) -> None:
    run_id = world.record(["a", "b"])
    world.fake.create_errors = [TransientApiError("Gemini API 429 slow down", code=429)]

    tick(world.ctx, world.catalog)

    (batch,) = world.batches(run_id)
    assert batch.state == "submitting"
    assert batch.last_error is not None and "429" in batch.last_error
    assert batch.not_before is not None
    assert world.fake.creates() == 0
    tick(world.ctx, world.catalog)  # still backing off: no new create
    assert [c[0] for c in world.fake.calls].count("create_batch") == 1

    world.clock.advance(60)
    tick(world.ctx, world.catalog)

    (batch,) = world.batches(run_id)
    assert batch.state == "running"
    assert world.fake.creates() == 1


def test_a_lost_create_answer_is_reconciled_by_display_name_never_two_batches(
    world: World,
) -> None:
    run_id = world.record(["a", "b"])
    world.fake.lose_next_create_answer = True

    tick(world.ctx, world.catalog)

    (batch,) = world.batches(run_id)
    assert batch.state == "submitting"  # made on the service, but we do not know it yet
    assert world.fake.creates() == 1
    world.clock.advance(60)
    tick(world.ctx, world.catalog)

    (batch,) = world.batches(run_id)
    assert batch.state == "running"
    assert world.fake.creates() == 1
    (remote,) = world.fake.batches.values()
    assert (batch.remote_name, remote.display_name) == (remote.name, batch.display_name)
    assert world.batch_events(batch.id)[-1] == (
        "submitting",
        "running",
        "reconciled by display name",
    )


def test_poll_and_harvest_of_a_fake_results_file_store_the_images(world: World) -> None:
    run_id = world.record(["a", "b", "c"], per_batch=3)
    tick(world.ctx, world.catalog)
    (name,) = world.fake.batches
    world.fake.finish(name, [image_line(r["key"]) for r in world.fake.requests(name)])

    result = tick(world.ctx, world.catalog)

    assert result.harvested == 1
    assert result.finished_runs == [run_id]
    (batch,) = world.batches(run_id)
    assert batch.state == "harvested"
    stored = sorted(p.name for p in world.out.rglob("*.png"))
    assert stored == ["a.png", "b.png", "c.png"]
    assert all(p.read_bytes() == tiny_png() for p in world.out.rglob("*.png"))
    with world.ctx.ledger.engine.connect() as conn:
        assert repo.item_counts(conn, run_id) == {"succeeded": 3}
        assert repo.get_run(conn, run_id).state == "finished"


def _codes(world: World, run_id: str) -> dict[str, tuple[str | None, str | None, str | None]]:
    """key -> (attempt outcome, attempt reason code, item reason code), of the latest
    recorded attempt (a retried item is in a new batch already)."""
    a, i = repo.ATTEMPTS, repo.ITEMS
    query = (
        select(i.c.key, a.c.outcome, a.c.reason_code, i.c.reason_code)
        .select_from(a.join(i, i.c.id == a.c.item_id))
        .where(i.c.run_id == run_id, a.c.outcome.is_not(None))
        .order_by(a.c.id)
    )
    with world.ctx.ledger.engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(query)}


def test_harvest_and_poll_record_reason_codes(world: World) -> None:
    """A key missing from the results file and a batch that expired are recorded with their
    codes, on the attempt and on the item going back to the queue."""
    run_id = world.record(["a", "b", "c", "d"], per_batch=2)
    tick(world.ctx, world.catalog)
    first, second = sorted(world.fake.batches)
    world.fake.finish(first, [image_line("a")])
    world.fake.batches[second] = replace(world.fake.batches[second], state="JOB_STATE_EXPIRED")

    tick(world.ctx, world.catalog)

    codes = _codes(world, run_id)
    assert codes["a"] == ("succeeded", None, None)
    assert codes["b"] == ("retry", "missing", "missing")
    assert codes["c"] == ("retry", "batch_expired", "batch_expired")
    assert codes["d"] == ("retry", "batch_expired", "batch_expired")


def test_a_refused_create_records_its_code(world: World) -> None:
    run_id = world.record(["a"])
    world.fake.create_errors = [ApiError("Gemini API 400 bad request", code=400)]

    tick(world.ctx, world.catalog)

    assert _codes(world, run_id)["a"] == ("not_sent", "create_refused", "create_refused")


class _SlowStore(LocalStore):
    """A local folder whose puts take a while, like uploads over a network; counts how many
    run at once."""

    puts_in_flight = 6

    def __init__(self, root: str) -> None:
        super().__init__(root, fsync=False)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def put_once(self, *args: Any, **kwargs: Any) -> StoredObject:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            return super().put_once(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_harvest_keeps_the_stores_puts_in_flight_beyond_its_parse_workers(world: World) -> None:
    """One parse worker (the fixture's), a store that asks for 6 puts at once: the harvest
    runs 6 at once, and records every image once."""
    stores: list[_SlowStore] = []

    def factory(uri: str) -> _SlowStore:
        stores.append(_SlowStore(uri))
        return stores[-1]

    world.ctx.store_factory = factory
    keys = [f"k{i:02d}" for i in range(18)]
    run_id = world.record(keys, per_batch=18)
    tick(world.ctx, world.catalog)
    (name,) = world.fake.batches
    world.fake.finish(name, [image_line(r["key"]) for r in world.fake.requests(name)])

    tick(world.ctx, world.catalog)

    assert world.ctx.settings.harvest_workers == 1
    assert max(s.most for s in stores) == 6
    assert sorted(p.stem for p in world.out.rglob("*.png")) == keys
    with world.ctx.ledger.engine.connect() as conn:
        assert repo.item_counts(conn, run_id) == {"succeeded": 18}
