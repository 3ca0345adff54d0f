"""The `Ledger` object's steps against an in-memory SQLite ledger: each opens its own
transaction, makes its guarded moves with their event rows and returns frozen values; a
stale move (someone moved the row first) raises or answers False and changes nothing, and
an invalid one raises naming the ids and states, rolling the whole step back."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, func, select

from pipeline.adapters.ledger import db, repo
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.core.errors import InvalidTransition, StaleTransition, UsageError
from pipeline.core.states import BatchState, ItemState
from pipeline.core.values import Usage
from tests.unit.test_ledger_transitions import MODEL, NOW, RUN, _add_items

LATER = NOW + timedelta(minutes=5)


def _batch(ledger: Ledger, keys: list[str], state: BatchState) -> tuple[int, list[int]]:
    """A batch of new items `keys` (in_batch, one attempt each), put in `state`."""
    with ledger.engine.begin() as conn:
        batch = repo.open_batch(conn, RUN, MODEL, NOW)
        ids = _add_items(conn, keys, "in_batch", batch.id)
        repo.close_batch(conn, RUN, batch.id, MODEL, len(ids), 10, 5, NOW)
        repo.update_batch(conn, batch.id, state=state.value, remote_name=f"batches/{batch.id}")
    return batch.id, ids


def _events(conn: Connection, **where: Any) -> list[tuple[Any, ...]]:
    e = repo.EVENTS
    query = select(e.c.batch_id, e.c.item_id, e.c.from_state, e.c.to_state).order_by(e.c.id)
    for column, value in where.items():
        query = query.where(e.c[column] == value)
    return [tuple(r) for r in conn.execute(query)]


def _event_count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(repo.EVENTS)).scalar_one())


def _item_states(ledger: Ledger) -> dict[int, str]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(repo.ITEMS.c.id, repo.ITEMS.c.state)).all())


def _retry_all(
    run: repo.RunRow, batch: repo.BatchRow, rows: Sequence[Any], state: ItemState = ItemState.QUEUED
) -> list[repo.AttemptOutcome]:
    """A Settle: every unrecorded attempt retried (its item queued again)."""
    return [
        repo.AttemptOutcome(
            item_id=r.item_id,
            outcome="retry",
            reason="no output",
            usage=Usage(),
            cost_nanos=0,
            standard_nanos=0,
            state=state,
            model=batch.model,
        )
        for r in rows
    ]


# ── runs ─────────────────────────────────────────────────────────────────────


def test_values_are_frozen(ledger: Ledger) -> None:
    """What a step returns cannot be written through."""
    counts = ledger.run_counts(RUN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        counts.run = counts.run  # type: ignore[misc]
    assert counts.counts == {}


def test_get_run_unknown_raises_usage_error(ledger: Ledger) -> None:
    with pytest.raises(UsageError):
        ledger.get_run("no-such-run")


def test_retry_requeues_failed_items_and_reopens_a_finished_run(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        ids = _add_items(conn, ["a", "b"], "failed")
        repo.set_run_state(conn, RUN, "active", "finished", NOW)
    done = ledger.retry(RUN, include_final=False, now=LATER)
    assert (done.run_id, done.count) == (RUN, 2)
    assert {i: "queued" for i in ids} == _item_states(ledger)
    assert ledger.get_run(RUN).state == "active"
    assert ledger.retry(RUN, include_final=False, now=LATER).count == 0


def test_set_budget_records_old_and_new_and_refuses_a_cancelled_run(ledger: Ledger) -> None:
    first = ledger.set_budget(RUN, 5_000, NOW)
    assert (first.old_nanos, first.spent_nanos, first.reserved_nanos) == (None, 0, 0)
    assert ledger.set_budget(RUN, 7_000, LATER).old_nanos == 5_000
    assert ledger.get_run(RUN).budget_nanos == 7_000
    ledger.cancel_run(RUN, LATER, _retry_all)
    with pytest.raises(UsageError, match=f"run {RUN} is cancelled"):
        ledger.set_budget(RUN, 9_000, LATER)
    assert ledger.get_run(RUN).budget_nanos == 7_000


def test_finish_run_waits_for_open_items_and_is_stale_the_second_time(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        (item,) = _add_items(conn, ["a"], "queued")
    assert not ledger.finish_run(RUN, NOW)
    assert ledger.queued_work(RUN) == 1
    with ledger.engine.begin() as conn:
        repo.transition_items(conn, RUN, [item], ItemState.QUEUED, ItemState.CANCELLED, NOW)
    assert ledger.finish_run(RUN, LATER)
    assert ledger.get_run(RUN).state == "finished"
    before = _event_count(ledger)
    assert not ledger.finish_run(RUN, LATER)  # another process finished it first
    assert before == _event_count(ledger)
    assert ledger.queued_work(RUN) == 0


def test_hold_and_release_are_guarded(ledger: Ledger) -> None:
    until = ledger.hold_run(RUN, "storage", "disk full", NOW, lambda tries: 60.0 * tries)
    assert NOW + timedelta(seconds=60) == until
    run = ledger.get_run(RUN)
    assert (run.hold_reason, run.hold_detail, run.hold_tries) == ("storage", "disk full", 1)
    assert ledger.release_hold(RUN, LATER)
    assert not ledger.release_hold(RUN, LATER)  # not held any more
    assert ledger.get_run(RUN).hold_reason is None


def test_mark_notified_once(ledger: Ledger) -> None:
    assert ledger.mark_notified(RUN, NOW)
    assert not ledger.mark_notified(RUN, LATER)


# ── batches ──────────────────────────────────────────────────────────────────


def test_batch_done_moves_a_running_batch_and_writes_its_event(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.RUNNING)
    ledger.batch_done(batch_id, LATER, "JOB_STATE_SUCCEEDED", "files/out", None)
    batch = ledger.get_batch(batch_id)
    assert (
        batch.state,
        batch.output_file,
        batch.remote_state,
    ) == ("done", "files/out", "JOB_STATE_SUCCEEDED")
    with ledger.engine.connect() as conn:
        assert (batch_id, None, "running", "done") == _events(conn, batch_id=batch_id)[-1]
    assert [batch] == ledger.batches_in(["done"], RUN)


def test_batch_done_stale_raises_naming_batch_and_states_and_writes_nothing(
    ledger: Ledger,
) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.DONE)
    before = _event_count(ledger)
    with pytest.raises(StaleTransition, match=rf"batch {batch_id} is done, expected running"):
        ledger.batch_done(batch_id, LATER, "JOB_STATE_SUCCEEDED", "files/out", None)
    assert before == _event_count(ledger)


def test_batch_ended_settles_its_attempts_in_the_same_transaction(ledger: Ledger) -> None:
    batch_id, ids = _batch(ledger, ["a", "b"], BatchState.RUNNING)
    run, batch = ledger.get_run(RUN), ledger.get_batch(batch_id)
    ledger.batch_ended(run, batch, BatchState.FAILED, LATER, "JOB_STATE_FAILED", _retry_all)
    assert ledger.get_batch(batch_id).state == "failed"
    assert {i: "queued" for i in ids} == _item_states(ledger)
    with ledger.engine.connect() as conn:
        assert all(a.outcome == "retry" for a in repo.batch_attempts(conn, batch_id))
        moves = [e[2:] for e in _events(conn, batch_id=batch_id) if e[1] is not None]
    assert moves == [("in_batch", "queued")] * 2


def test_batch_ended_stale_settles_nothing(ledger: Ledger) -> None:
    batch_id, ids = _batch(ledger, ["a"], BatchState.RUNNING)
    run, batch = ledger.get_run(RUN), ledger.get_batch(batch_id)
    ledger.batch_done(batch_id, NOW, "JOB_STATE_SUCCEEDED", "files/out", None)
    before = _event_count(ledger)
    with pytest.raises(StaleTransition, match=rf"batch {batch_id} is done, expected running"):
        ledger.batch_ended(run, batch, BatchState.EXPIRED, LATER, "JOB_STATE_EXPIRED", _retry_all)
    assert before == _event_count(ledger)
    assert {ids[0]: "in_batch"} == _item_states(ledger)


def test_batch_ended_invalid_target_raises_naming_batch_and_states(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.RUNNING)
    run, batch = ledger.get_run(RUN), ledger.get_batch(batch_id)
    with pytest.raises(InvalidTransition, match=rf"batch {batch_id}: .*running to queued"):
        ledger.batch_ended(run, batch, BatchState.QUEUED, LATER, "?", _retry_all)
    assert ledger.get_batch(batch_id).state == "running"


def test_batch_ended_invalid_item_move_rolls_the_whole_step_back(ledger: Ledger) -> None:
    """A settle that asks for an invalid item move raises naming the items and states, and
    the batch's own move is not kept either."""
    batch_id, ids = _batch(ledger, ["a"], BatchState.RUNNING)
    run, batch = ledger.get_run(RUN), ledger.get_batch(batch_id)
    before = _event_count(ledger)

    def to_in_batch(
        r: repo.RunRow, b: repo.BatchRow, rows: Sequence[Any]
    ) -> list[repo.AttemptOutcome]:
        return _retry_all(r, b, rows, ItemState.IN_BATCH)

    message = rf"items \[{ids[0]}\] of run {RUN} cannot move from in_batch to in_batch"
    with pytest.raises(InvalidTransition, match=message):
        ledger.batch_ended(run, batch, BatchState.FAILED, LATER, "JOB_STATE_FAILED", to_in_batch)
    assert ledger.get_batch(batch_id).state == "running"
    assert before == _event_count(ledger)


def test_cancel_run_cancels_queued_batches_and_open_items_and_returns_live_ones(
    ledger: Ledger,
) -> None:
    queued_id, queued_items = _batch(ledger, ["a"], BatchState.QUEUED)
    running_id, running_items = _batch(ledger, ["b"], BatchState.RUNNING)
    with ledger.engine.begin() as conn:
        (loose,) = _add_items(conn, ["c"], "queued")
    cancelled = ledger.cancel_run(RUN, LATER, _retry_all)
    assert cancelled.run.state == "cancelled"
    assert [running_id] == [b.id for b in cancelled.live]
    assert ledger.get_batch(queued_id).state == "cancelled"
    states = _item_states(ledger)
    assert states[loose] == "cancelled"
    assert states[running_items[0]] == "in_batch"  # its output may still come
    assert states[queued_items[0]] == "cancelled"  # settled (queued again), then cancelled
    assert RUN in ledger.active_runs()  # cancelled, but a batch still has output coming


def test_leases_one_owner_at_a_time(ledger: Ledger) -> None:
    assert ledger.acquire_lease("scheduler", "w1", NOW, 60)
    assert not ledger.acquire_lease("scheduler", "w2", NOW, 60)
    assert ledger.acquire_lease("scheduler", "w2", NOW + timedelta(seconds=61), 60)
    ledger.release_lease("scheduler", "w2")
    assert ledger.acquire_lease("scheduler", "w1", NOW, 60)


def test_batch_lookups(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.RUNNING)
    batch = ledger.get_batch(batch_id)
    assert batch == ledger.batch_by_remote_name(f"batches/{batch_id}")
    assert ledger.batch_by_remote_name("batches/none") is None
    assert {batch.display_name: "running"} == ledger.batch_states_by_display(
        [batch.display_name, "other"]
    )
    ledger.batch_remote_state(batch_id, "JOB_STATE_RUNNING")
    assert ledger.get_batch(batch_id).remote_state == "JOB_STATE_RUNNING"
    spend = ledger.run_spend(RUN)
    assert (RUN, (batch_id,)) == (spend.run.id, tuple(b.id for b in spend.batches))


# ── prompt cache, reads ──────────────────────────────────────────────────────


def test_serve_cached_moves_a_queued_item_once(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        (item,) = _add_items(conn, ["a"], "queued")
    chunk = ledger.cache_chunk(RUN, 0, 10)
    assert [item] == [r.id for r in chunk.rows]
    assert chunk.sources == {}  # no other run stored this prompt
    assert ledger.serve_cached(RUN, item, "/o/a.png", "f" * 64, NOW, "cache", MODEL)
    assert {item: "succeeded"} == _item_states(ledger)
    before = _event_count(ledger)
    assert not ledger.serve_cached(RUN, item, "/o/a.png", "f" * 64, LATER, "cache", MODEL)
    assert before == _event_count(ledger)
    assert ledger.cache_totals(RUN).served == 1
    assert ledger.cache_chunk(RUN, 0, 10).rows == ()


def test_reads_stream_and_page(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        _add_items(conn, ["a", "b"], "succeeded")
        _add_items(conn, ["c"], "failed")
    assert len(list(ledger.report_rows(RUN))) == 3
    assert [r.key for r in ledger.failed_items(RUN)] == ["c"]
    page = ledger.succeeded_page(RUN, 0, 1)
    assert len(page) == 1
    rest = ledger.succeeded_page(RUN, page[0]["item"].id, 10)
    assert len(rest) == 1
    assert ledger.item_counts(RUN) == {"succeeded": 2, "failed": 1}


def test_metrics_snapshot_reads_every_run(ledger: Ledger) -> None:
    snap = ledger.metrics_snapshot(NOW - timedelta(days=1), NOW)
    assert [r.id for r in snap.runs] == [RUN]
    assert snap.day_spend == (0, 0)
    assert ledger.status_figures(RUN, None).metrics.duplicates[0] == 0


# ── uploads and deliveries ───────────────────────────────────────────────────


def test_upload_intent_once_per_name_then_done_then_stale(ledger: Ledger) -> None:
    row = ledger.upload_intent("a" * 64, "files/nb-a-1", "image/png", NOW)
    assert row is not None and row.state == "uploading"
    assert ledger.upload_intent("a" * 64, "files/nb-a-1", "image/png", NOW) is None
    ledger.upload_done(row.id, "https://files/a", NOW + timedelta(hours=40), LATER)
    assert [u.state for u in ledger.uploads_of("a" * 64)] == ["active"]
    assert ledger.uploads_gone(["files/nb-a-1", "files/unknown"], "gone") == 1
    assert [u.state for u in ledger.uploads_of("a" * 64)] == ["stale"]


def test_delivery_recorded_once_and_finished(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.RUNNING)
    name = f"batches/{batch_id}"
    fields = {"scheme": "hmac", "event": "batch.succeeded", "batch_name": name}
    assert ledger.record_delivery(key="k1", state="queued", now=NOW, **fields)
    assert not ledger.record_delivery(key="k1", state="queued", now=NOW, **fields)
    assert [name] == [d.batch_name for d in ledger.pending_deliveries(10)]
    assert ledger.finish_deliveries(name, "done", "batch done", LATER) == 1
    assert ledger.pending_deliveries(10) == []


# ── opening ──────────────────────────────────────────────────────────────────


def test_open_migrates_a_new_sqlite_ledger_to_head(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.db")
    try:
        assert db.current_revision(ledger.engine) == db.HEAD_REVISION
        assert ledger.dialect == "sqlite"
        assert ledger.list_runs() == []
    finally:
        ledger.dispose()


def test_open_without_migrating_then_upgrade(tmp_path: Path) -> None:
    ledger = Ledger.open(f"sqlite:///{tmp_path}/ledger.db", migrate=False)
    try:
        assert db.current_revision(ledger.engine) is None
        assert ledger.upgrade() == db.HEAD_REVISION
    finally:
        ledger.dispose()


def test_status_figures_count_items_batches_and_the_first_queued_batch(ledger: Ledger) -> None:
    """`status_figures` answers a run's status in one read: items by state, batches by
    state, the oldest queued batch (what `waiting` explains), and the day's spend only when
    asked for."""
    running, _ = _batch(ledger, ["a", "b"], BatchState.RUNNING)
    queued, _ = _batch(ledger, ["c"], BatchState.QUEUED)

    figures = ledger.status_figures(RUN, None)
    assert figures.counts == {"in_batch": 3}
    assert figures.batches == {"running": 1, "queued": 1}
    assert figures.first_queued is not None and figures.first_queued.id == queued
    assert figures.day_spend is None
    assert figures.spent_nanos == 0 and figures.reserved_nanos > 0
    assert ledger.status_figures(RUN, NOW).day_spend is not None
    assert running != queued


def test_table_reads_see_the_runs_outputs_and_rejects(ledger: Ledger) -> None:
    """`table_reads` gives the reads the manifest and rejects are written from, on one
    connection: the runs' outputs and a run's rejects in row order."""
    with ledger.table_reads() as reads:
        assert [run_id for run_id, _ in reads.run_outputs()] == [RUN]
        assert reads.run(RUN).id == RUN
        assert list(reads.rejects(RUN)) == []
