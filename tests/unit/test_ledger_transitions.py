"""Every state change the ledger offers, against an in-memory SQLite ledger: the guarded
update, the event row it writes, a stale change (someone moved the row first: zero rows, no
event) and an invalid one (raises naming the ids and both states, changes nothing)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, func, select, update
from sqlalchemy.pool import StaticPool

from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.models import Base
from pipeline.core.errors import InvalidTransition, StaleTransition
from pipeline.core.states import BATCH_TRANSITIONS, ITEM_TRANSITIONS, BatchState, ItemState
from pipeline.core.values import Usage

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN = "unit-run"
MODEL = "gemini-3-pro-image-preview"


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A fresh in-memory ledger at the models' schema, with one run."""
    eng = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(eng)
    with eng.begin() as conn:
        repo.insert_run(conn, _run_values())
    yield eng
    eng.dispose()


def _run_values() -> dict[str, Any]:
    return {
        "id": RUN,
        "identity": "identity",
        "job": "unit",
        "state": "active",
        "model": MODEL,
        "fallback_model": None,
        "spec_path": "unit.toml",
        "spec_json": "{}",
        "input_sha256": "0" * 64,
        "output_uri": "/tmp/out",
        "run_date": "2025-01-02",
        "max_attempts": 3,
        "max_enqueued_tokens": 10**9,
        "max_requests_per_batch": 100,
        "max_batch_bytes": 10**9,
        "budget_nanos": None,
        "created_at": NOW,
    }


def _add_items(
    conn: Connection, keys: list[str], state: str = "queued", batch_id: int | None = None
) -> list[int]:
    rows = [
        (RUN, k, i, f"prompt {k}", f"sha-{k}", "1:1", "1K", MODEL, 10) for i, k in enumerate(keys)
    ]
    succeeded = state == ItemState.SUCCEEDED  # a succeeded row needs its uri: set it after
    repo.insert_items(conn, rows, state="queued" if succeeded else state, batch_id=batch_id)
    if succeeded:
        conn.execute(
            update(repo.ITEMS)
            .where(repo.ITEMS.c.key.in_(keys))
            .values(state="succeeded", uri="/o/x.png")
        )
    found = conn.execute(
        select(repo.ITEMS.c.key, repo.ITEMS.c.id).where(repo.ITEMS.c.key.in_(keys))
    )
    ids = dict(found.all())
    return [ids[k] for k in keys]


def _states(conn: Connection) -> dict[int, str]:
    return dict(conn.execute(select(repo.ITEMS.c.id, repo.ITEMS.c.state)).all())


def _item_events(conn: Connection) -> list[tuple[Any, ...]]:
    """(item id, batch id, from, to, detail) of every item event, in order."""
    e = repo.EVENTS
    query = (
        select(e.c.item_id, e.c.batch_id, e.c.from_state, e.c.to_state, e.c.detail)
        .where(e.c.item_id.is_not(None))
        .order_by(e.c.id)
    )
    return [tuple(r) for r in conn.execute(query)]


def _event_count(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(repo.EVENTS)).scalar_one()


def _batch_with_items(conn: Connection, keys: list[str]) -> tuple[int, list[int]]:
    """A queued batch holding new items `keys` (in_batch; no attempt rows yet)."""
    batch = repo.open_batch(conn, RUN, MODEL, NOW)
    ids = _add_items(conn, keys, "in_batch", batch.id)
    repo.close_batch(conn, RUN, batch.id, MODEL, len(ids), 10 * len(ids), 5 * len(ids), NOW)
    return batch.id, ids


# ── batches ──────────────────────────────────────────────────────────────────

BATCH_PAIRS = [(f, t) for f, tos in BATCH_TRANSITIONS.items() for t in sorted(tos)]


@pytest.mark.parametrize(("from_", "to"), BATCH_PAIRS, ids=lambda s: s.value)
def test_batch_transition_moves_it_and_writes_its_event(
    engine: Engine, from_: BatchState, to: BatchState
) -> None:
    with engine.begin() as conn:
        batch = repo.open_batch(conn, RUN, MODEL, NOW)
        repo.update_batch(conn, batch.id, state=from_.value, remote_name=f"batches/{batch.id}")
        repo.transition_batch(conn, batch.id, from_, to, NOW, "why")
    with engine.connect() as conn:
        assert repo.get_batch(conn, batch.id).state == to.value
        last = conn.execute(
            select(repo.EVENTS.c.batch_id, repo.EVENTS.c.from_state, repo.EVENTS.c.to_state)
            .order_by(repo.EVENTS.c.id.desc())
            .limit(1)
        ).one()
        assert tuple(last) == (batch.id, from_.value, to.value)


def test_batch_transition_stale_raises_naming_batch_and_states_and_writes_nothing(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        batch = repo.open_batch(conn, RUN, MODEL, NOW)
        repo.update_batch(conn, batch.id, state="running", remote_name="batches/x")
        before = _event_count(conn)
        with pytest.raises(StaleTransition, match=rf"batch {batch.id} is running, expected queued"):
            repo.transition_batch(conn, batch.id, BatchState.QUEUED, BatchState.SUBMITTING, NOW)
        assert _event_count(conn) == before
        assert repo.get_batch(conn, batch.id).state == "running"


def test_batch_transition_invalid_raises_naming_batch_and_states(engine: Engine) -> None:
    with engine.begin() as conn:
        batch = repo.open_batch(conn, RUN, MODEL, NOW)
        repo.update_batch(conn, batch.id, state="done", remote_name="batches/x")
        before = _event_count(conn)
        with pytest.raises(InvalidTransition, match=rf"batch {batch.id}: .* from done to queued"):
            repo.transition_batch(conn, batch.id, BatchState.DONE, BatchState.QUEUED, NOW)
        assert _event_count(conn) == before
        assert repo.get_batch(conn, batch.id).state == "done"


def test_open_and_close_batch_write_the_queued_event_and_no_attempt_row(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        batch_id, ids = _batch_with_items(conn, ["a", "b"])
    with engine.connect() as conn:
        attempts = repo.batch_attempts(conn, batch_id)
        assert sorted(a.item_id for a in attempts) == ids
        assert {a.outcome for a in attempts} == {None}  # in flight: the item carries the batch
        assert conn.execute(select(func.count()).select_from(repo.ATTEMPTS)).scalar_one() == 0
        event = conn.execute(
            select(repo.EVENTS.c.from_state, repo.EVENTS.c.to_state, repo.EVENTS.c.detail).where(
                repo.EVENTS.c.batch_id == batch_id
            )
        ).one()
        assert tuple(event) == (None, "queued", "2 items")


# ── items: the checked function itself ──────────────────────────────────────

ITEM_PAIRS = [(f, t) for f, tos in ITEM_TRANSITIONS.items() for t in sorted(tos)]
INVALID_ITEM_PAIRS = [
    (f, t) for f, t in itertools.product(ItemState, ItemState) if t not in ITEM_TRANSITIONS[f]
]


@pytest.mark.parametrize(("from_", "to"), ITEM_PAIRS, ids=lambda s: s.value)
def test_transition_items_allows_every_listed_pair_and_writes_events(
    engine: Engine, from_: ItemState, to: ItemState
) -> None:
    with engine.begin() as conn:
        ids = _add_items(conn, ["a", "b"], from_.value)
        values = {"uri": "/o/x.png"} if to == ItemState.SUCCEEDED else {}
        moved = repo.transition_items(
            conn, RUN, ids, from_, to, NOW, values=values, detail="because"
        )
        assert moved == 2
        assert set(_states(conn).values()) == {to.value}
        assert _item_events(conn) == [(i, None, from_.value, to.value, "because") for i in ids]


@pytest.mark.parametrize(("from_", "to"), INVALID_ITEM_PAIRS, ids=lambda s: s.value)
def test_transition_items_refuses_every_other_pair_naming_ids_and_states(
    engine: Engine, from_: ItemState, to: ItemState
) -> None:
    with engine.begin() as conn:
        ids = _add_items(conn, ["a", "b"], from_.value)
        message = rf"items \[{ids[0]}, {ids[1]}\] of run {RUN} cannot move from {from_} to {to}"
        with pytest.raises(InvalidTransition, match=message):
            repo.transition_items(conn, RUN, ids, from_, to, NOW)
        assert set(_states(conn).values()) == {from_.value}
        assert _item_events(conn) == []


def test_transition_items_stale_moves_nothing_and_writes_no_event(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = _add_items(conn, ["a"], "in_batch")  # someone put it in a batch first
        moved = repo.transition_items(conn, RUN, ids, ItemState.QUEUED, ItemState.CANCELLED, NOW)
        assert moved == 0
        assert _states(conn) == {ids[0]: "in_batch"}
        assert _item_events(conn) == []


# ── items: the ledger's named moves ─────────────────────────────────────────


def test_create_batch_moves_queued_items_into_it(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = _add_items(conn, ["a", "b", "c"])
        items = repo.queued_items(conn, RUN, 0, 10)
        batch_id = repo.create_batch(conn, repo.get_run(conn, RUN), MODEL, items, 30, 15, NOW)
        assert _states(conn) == dict.fromkeys(ids, "in_batch")
        assert len(repo.batch_attempts(conn, batch_id)) == 3
        assert _item_events(conn) == []  # the batch's own event counts them
        assert repo.get_batch(conn, batch_id).item_count == 3


def test_create_batch_stale_raises_naming_the_items_and_rolls_back(engine: Engine) -> None:
    with engine.begin() as conn:
        ids = _add_items(conn, ["a", "b", "c"])
        items = repo.queued_items(conn, RUN, 0, 10)
    with engine.begin() as conn:  # another tick serves the middle one first
        assert repo.mark_cached(conn, RUN, ids[1], "/o/b.png", "f" * 64, NOW, "cache", MODEL)
    message = rf"items {ids[0]}\.\.{ids[2]} of run {RUN}: 2 of 3 were still queued"
    with pytest.raises(StaleTransition, match=message), engine.begin() as conn:
        repo.create_batch(conn, repo.get_run(conn, RUN), MODEL, items, 30, 15, NOW)
    with engine.connect() as conn:
        assert _states(conn) == {ids[0]: "queued", ids[1]: "succeeded", ids[2]: "queued"}
        assert repo.batches_of_run(conn, RUN) == []


def test_mark_cached_succeeds_a_queued_item_once(engine: Engine) -> None:
    with engine.begin() as conn:
        (item,) = _add_items(conn, ["a"])
        assert repo.mark_cached(conn, RUN, item, "/o/a.png", "f" * 64, NOW, "from run x", MODEL)
        assert _item_events(conn) == [(item, None, "queued", "succeeded", "from run x")]
        # stale: it is no longer queued
        assert not repo.mark_cached(conn, RUN, item, "/o/a.png", "f" * 64, NOW, "again", MODEL)
        assert len(_item_events(conn)) == 1


def test_fail_items_for_good_from_queued_and_just_recorded(engine: Engine) -> None:
    with engine.begin() as conn:
        (queued,) = _add_items(conn, ["q"])
        (new,) = _add_items(conn, ["n"], "failed")
        assert repo.fail_items_for_good(conn, RUN, [("q", "name taken")], "queued", NOW) == 1
        assert repo.fail_items_for_good(conn, RUN, [("n", "taken too")], "failed", NOW) == 1
        assert _item_events(conn) == [
            (queued, None, "queued", "failed", "name taken"),
            (new, None, None, "failed", "taken too"),  # created failed: no move
        ]
        finals = conn.execute(select(repo.ITEMS.c.final, repo.ITEMS.c.error)).all()
        assert sorted(map(tuple, finals)) == [(True, "name taken"), (True, "taken too")]


def test_cancel_open_items_cancels_queued_and_leaves_in_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        (queued,) = _add_items(conn, ["q"])
        _, (in_batch,) = _batch_with_items(conn, ["b"])
        assert repo.cancel_open_items(conn, RUN, NOW) == 1
        assert _states(conn) == {queued: "cancelled", in_batch: "in_batch"}
        assert _item_events(conn) == [(queued, None, "queued", "cancelled", "run cancelled")]


@pytest.mark.parametrize("include_final", [False, True])
def test_requeue_items_requeues_failed_and_cancelled(engine: Engine, include_final: bool) -> None:
    with engine.begin() as conn:
        failed, final, cancelled = _add_items(conn, ["f", "g", "c"])
        repo.transition_items(conn, RUN, [failed], ItemState.QUEUED, ItemState.FAILED, NOW)
        repo.fail_items_for_good(conn, RUN, [("g", "for good")], "queued", NOW)
        repo.cancel_open_items(conn, RUN, NOW)
        before = len(_item_events(conn))
        moved = repo.requeue_items(conn, RUN, include_final=include_final, now=NOW)
        requeued = [failed, final] if include_final else [failed]
        assert moved == len(requeued) + 1
        assert _item_events(conn)[before:] == [
            *[(i, None, "failed", "queued", "retry requested") for i in requeued],
            (cancelled, None, "cancelled", "queued", "retry requested"),
        ]
        assert _states(conn)[final] == ("queued" if include_final else "failed")


def _outcome(attempt: Any, state: ItemState, outcome: str, **kw: Any) -> repo.AttemptOutcome:
    return repo.AttemptOutcome(
        item_id=attempt.item_id,
        outcome=outcome,
        reason=kw.pop("reason", None),
        usage=Usage(input=10, output_image=1120),
        cost_nanos=100,
        standard_nanos=200,
        state=state,
        model=MODEL,
        **kw,
    )


def test_record_outcomes_records_attempts_and_moves_items_out_of_the_batch_once(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        batch_id, ids = _batch_with_items(conn, ["s", "r", "f", "c"])
        att = {a.key: a for a in repo.batch_attempts(conn, batch_id)}
        outcomes = [
            _outcome(att["s"], ItemState.SUCCEEDED, "succeeded", uri="/o/s.png", sha256="a" * 64),
            _outcome(att["r"], ItemState.QUEUED, "retry", reason="try again"),
            _outcome(att["f"], ItemState.FAILED, "final", reason="blocked", final=True),
            _outcome(
                att["c"], ItemState.CANCELLED, "cancelled", reason="run cancelled", tried=False
            ),
        ]
        repo.record_outcomes(conn, RUN, batch_id, outcomes, NOW, model=MODEL)
        # A replay (after a kill) inserts the same attempts again: nothing changes.
        repo.record_outcomes(conn, RUN, batch_id, outcomes, NOW, model=MODEL)
        s, r, f, c = ids
        assert _states(conn) == {s: "succeeded", r: "queued", f: "failed", c: "cancelled"}
        assert _item_events(conn) == [
            (s, batch_id, "in_batch", "succeeded", None),
            (r, batch_id, "in_batch", "queued", None),
            (f, batch_id, "in_batch", "failed", None),
            (c, batch_id, "in_batch", "cancelled", None),
        ]
        recorded = {a.key: a.outcome for a in repo.batch_attempts(conn, batch_id)}
        assert recorded == {"s": "succeeded", "r": "retry", "f": "final", "c": "cancelled"}
        rows = conn.execute(select(func.count(), func.sum(repo.ATTEMPTS.c.cost_nanos))).one()
        assert tuple(rows) == (4, 400)  # one row each, each cost counted once
        tries = dict(conn.execute(select(repo.ITEMS.c.key, repo.ITEMS.c.tries)).all())
        assert tries == {"s": 1, "r": 1, "f": 1, "c": 0}


def test_record_outcomes_invalid_next_state_raises_naming_items_and_states(
    engine: Engine,
) -> None:
    with engine.begin() as conn:
        batch_id, (item,) = _batch_with_items(conn, ["a"])
        (attempt,) = repo.batch_attempts(conn, batch_id)
        bad = _outcome(attempt, ItemState.IN_BATCH, "retry")
        message = rf"items \[{item}\] of run {RUN} cannot move from in_batch to in_batch"
        with pytest.raises(InvalidTransition, match=message):
            repo.record_outcomes(conn, RUN, batch_id, [bad], NOW, model=MODEL)
        assert _item_events(conn) == []


def test_refuse_batch_items_fails_them_for_good_without_a_try(engine: Engine) -> None:
    with engine.begin() as conn:
        batch_id, ids = _batch_with_items(conn, ["a", "b"])
        assert repo.refuse_batch_items(conn, RUN, batch_id, MODEL, "refused: 400", NOW) == 2
        assert _states(conn) == dict.fromkeys(ids, "failed")
        assert _item_events(conn) == [
            (i, batch_id, "in_batch", "failed", "refused: 400") for i in ids
        ]
        attempts = repo.batch_attempts(conn, batch_id)
        assert {a.outcome for a in attempts} == {"not_sent"}
        assert {a.tries for a in attempts} == {0}
