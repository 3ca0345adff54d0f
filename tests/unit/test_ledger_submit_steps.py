"""The `Ledger`'s submit, harvest and recording steps against an in-memory SQLite ledger:
forming batches, a create's intent and its outcomes (each guarded: a stale move raises
naming the batch and states and writes nothing), what limits a create, a batch's claim,
the harvest's records, and the run-recording unit of work (committed at the end of its
block, rolled back when it raises)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Table, func, select

from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import Ledger, LiveLoad, OpenKeys
from pipeline.core.errors import StaleTransition
from pipeline.core.states import BatchState, ItemState
from pipeline.core.values import Usage
from tests.unit.test_ledger_object import _batch, _event_count, _events, _item_states
from tests.unit.test_ledger_transitions import MODEL, NOW, RUN, _add_items, _run_values

LATER = NOW + timedelta(minutes=5)


def _count(ledger: Ledger, table: Table) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _success(item_id: int) -> repo.AttemptOutcome:
    return repo.AttemptOutcome(
        item_id=item_id,
        outcome="succeeded",
        reason=None,
        usage=Usage(),
        cost_nanos=7,
        standard_nanos=14,
        state=ItemState.SUCCEEDED,
        model=MODEL,
        uri=f"/o/{item_id}.png",
        sha256="f" * 64,
    )


# ── forming batches ──────────────────────────────────────────────────────────


def test_create_batch_packs_queued_items_and_is_stale_when_another_tick_took_them(
    ledger: Ledger,
) -> None:
    with ledger.engine.begin() as conn:
        _add_items(conn, ["a", "b", "c"])
    queued = ledger.queued_items(RUN, 0, 10)
    assert [r.key for r in queued] == ["a", "b", "c"]
    run = ledger.get_run(RUN)
    batch_id = ledger.create_batch(run, MODEL, queued[:2], 20, 10, NOW)
    assert ledger.get_batch(batch_id).item_count == 2
    assert [r.key for r in ledger.queued_items(RUN, 0, 10)] == ["c"]
    before = (_count(ledger, repo.BATCHES), _event_count(ledger))
    with pytest.raises(StaleTransition, match=rf"run {RUN}: 1 of 3 were still queued"):
        ledger.create_batch(run, MODEL, queued, 30, 15, LATER)
    assert before == (_count(ledger, repo.BATCHES), _event_count(ledger))  # rolled back


def test_fail_taken_checks_other_runs_claims_in_its_transaction(ledger: Ledger) -> None:
    other = {**_run_values(), "id": "other-run", "identity": "other"}
    with ledger.engine.begin() as conn:
        repo.insert_run(conn, other)
        ids = _add_items(conn, ["a", "b"])
        conn.execute(
            repo.ITEMS.insert().values(
                run_id="other-run",
                key="b",
                row=0,
                prompt="p",
                prompt_sha256="s",
                aspect_ratio="1:1",
                image_size="1K",
                model=MODEL,
                est_tokens=1,
                state="queued",
            )
        )
    keys = ["a", "b"]
    seen: list[dict[str, str]] = []

    def check(open_keys: OpenKeys) -> dict[int, str]:
        claims = open_keys(["other-run"], keys)
        seen.append(claims)
        return {keys.index(k): f"taken by {r}" for k, r in claims.items()}

    assert ledger.fail_taken(RUN, keys, check, "queued", NOW) == {1: "taken by other-run"}
    assert seen == [{"b": "other-run"}]
    assert _item_states(ledger)[ids[0]] == "queued"
    assert _item_states(ledger)[ids[1]] == "failed"
    # The item is no longer queued: the same check moves nothing more.
    before = _event_count(ledger)
    ledger.fail_taken(RUN, keys, check, "queued", LATER)
    assert before == _event_count(ledger)


# ── what limits a create ─────────────────────────────────────────────────────


def test_live_load_and_spend(ledger: Ledger) -> None:
    _batch(ledger, ["a", "b"], BatchState.RUNNING)
    _batch(ledger, ["c"], BatchState.QUEUED)
    load = ledger.live_load(MODEL, vertex=False, limit=100)
    assert (load.batches, load.tokens) == (1, 10)
    assert ledger.live_load(MODEL, vertex=True, limit=100).tokens == 0
    assert ledger.live_load(MODEL, vertex=False, limit=1) == LiveLoad(1, 0)  # at the limit
    assert ledger.spend_of_run(RUN) == (0, 5)  # the running batch's estimate is reserved
    assert ledger.day_spend(NOW - timedelta(days=1)) == (0, 5)


# ── a batch's create ─────────────────────────────────────────────────────────


def test_holding_batch_one_owner_and_only_in_the_states_asked(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.QUEUED)
    with ledger.holding_batch(batch_id, "w1", NOW, 60, ("queued",)) as held:
        assert held is not None and held.id == batch_id
        with ledger.holding_batch(batch_id, "w2", NOW, 60, ("queued",)) as other:
            assert other is None
    with ledger.holding_batch(batch_id, "w2", NOW, 60, ("done",)) as wrong_state:
        assert wrong_state is None
    assert ledger.claim_batch(batch_id, "w3", NOW, 60)  # released after each block


def test_batch_intent_counts_the_create_and_is_stale_the_second_time(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.QUEUED)
    batch = ledger.get_batch(batch_id)
    ledger.batch_intent(batch, NOW)
    after = ledger.get_batch(batch_id)
    assert (after.state, after.create_tries) == ("submitting", batch.create_tries + 1)
    with ledger.engine.connect() as conn:
        assert (batch_id, None, "queued", "submitting") == _events(conn, batch_id=batch_id)[-1]
    before = _event_count(ledger)
    with pytest.raises(StaleTransition, match=rf"batch {batch_id} is submitting, expected queued"):
        ledger.batch_intent(batch, LATER)
    assert before == _event_count(ledger)
    assert ledger.get_batch(batch_id).create_tries == after.create_tries


def test_batch_submitted_then_stale(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.SUBMITTING)
    ledger.batch_backoff(batch_id, LATER, "503 unavailable")
    assert ledger.get_batch(batch_id).last_error == "503 unavailable"
    ledger.batch_submitted(batch_id, "batches/x", "JOB_STATE_PENDING", NOW, "created")
    batch = ledger.get_batch(batch_id)
    assert (batch.state, batch.remote_name, batch.not_before, batch.last_error) == (
        "running",
        "batches/x",
        None,
        None,
    )
    with pytest.raises(StaleTransition, match=rf"batch {batch_id} is running, expected submitting"):
        ledger.batch_submitted(batch_id, "batches/y", "JOB_STATE_PENDING", LATER, "created")
    assert ledger.get_batch(batch_id).remote_name == "batches/x"


def test_upload_and_input_gone(ledger: Ledger) -> None:
    batch_id, _ = _batch(ledger, ["a"], BatchState.QUEUED)
    ledger.batch_uploaded(batch_id, "files/in", NOW)
    assert ledger.get_batch(batch_id).file_name == "files/in"
    ledger.batch_input_gone(batch_id, "404 file not found")
    batch = ledger.get_batch(batch_id)
    assert (batch.file_name, batch.last_error) == (None, "404 file not found")


def test_batch_refused_fails_its_items_for_good_once(ledger: Ledger) -> None:
    batch_id, ids = _batch(ledger, ["a", "b"], BatchState.SUBMITTING)
    batch = ledger.get_batch(batch_id)
    ledger.batch_refused(batch, NOW, "400 bad model", "batch create refused: 400 bad model")
    assert ledger.get_batch(batch_id).state == "failed"
    assert {i: "failed" for i in ids} == _item_states(ledger)
    with ledger.engine.connect() as conn:
        attempts = repo.batch_attempts(conn, batch_id)
    assert sorted(a.outcome for a in attempts) == ["not_sent", "not_sent"]
    before = _event_count(ledger)
    with pytest.raises(StaleTransition, match=rf"batch {batch_id} is failed, expected submitting"):
        ledger.batch_refused(batch, LATER, "400", "refused")
    assert before == _event_count(ledger)


def test_request_rows_stream_and_an_empty_batch_is_cancelled(ledger: Ledger) -> None:
    batch_id, ids = _batch(ledger, ["a", "b"], BatchState.QUEUED)
    assert [row[0] for row in ledger.batch_request_rows(batch_id)] == ["a", "b"]
    batch = ledger.get_batch(batch_id)
    assert ledger.keep_or_cancel(batch, NOW, "nothing left")
    with ledger.engine.begin() as conn:
        repo.fail_items_for_good(conn, RUN, [("a", "x"), ("b", "x")], "in_batch", NOW)
    assert not ledger.keep_or_cancel(batch, NOW, "nothing left")
    assert ledger.get_batch(batch_id).state == "cancelled"
    assert set(_item_states(ledger).values()) == {"failed"}
    assert len(ids) == 2


# ── harvest ──────────────────────────────────────────────────────────────────


def test_harvest_records_once_and_harvested_is_stale_the_second_time(ledger: Ledger) -> None:
    batch_id, ids = _batch(ledger, ["a", "b"], BatchState.DONE)
    batch = ledger.get_batch(batch_id)
    start = ledger.harvest_start(batch_id)
    assert sorted((r.key, r.outcome) for r in start.rows) == [("a", None), ("b", None)]
    assert start.upload_shas == {}
    ledger.record_lines(RUN, batch, [_success(ids[0])], [], NOW)
    ledger.record_lines(RUN, batch, [_success(ids[0])], [], NOW)  # a replay records nothing
    assert _count(ledger, repo.ATTEMPTS) == 1
    replay = {r.key: r.outcome for r in ledger.harvest_start(batch_id).rows}
    assert replay == {"a": "succeeded", "b": None}
    ledger.batch_harvested(RUN, batch, [_success(ids[1])], LATER, "2 keys, 0 missing")
    assert ledger.get_batch(batch_id).state == "harvested"
    assert {i: "succeeded" for i in ids} == _item_states(ledger)
    before = _event_count(ledger)
    with pytest.raises(StaleTransition, match=rf"batch {batch_id} is harvested, expected done"):
        ledger.batch_harvested(RUN, batch, [], LATER, "again")
    assert before == _event_count(ledger)


# ── recording a run ──────────────────────────────────────────────────────────


def _new_run(run_id: str) -> dict[str, object]:
    return {**_run_values(), "id": run_id, "identity": run_id}


def test_recording_commits_the_run_its_items_and_batches_at_the_end(ledger: Ledger) -> None:
    with ledger.recording(_new_run("rec-run")) as rec:
        opened = rec.open_batch(MODEL, NOW)
        rows = [
            ("rec-run", k, i, "p", f"s-{k}", "1:1", "1K", MODEL, 10) for i, k in enumerate("ab")
        ]
        rec.items(rows, state="in_batch", batch_id=opened.id, rich=False)
        rec.close_batch(opened.id, MODEL, 2, 20, 10, NOW, None)
        rec.rejects([{"run_id": "rec-run", "row": 3, "key": "c", "reason": "empty prompt"}])
        rec.counts(2, 1, 10)
        assert rec.run().item_count == 2  # the recording sees its own rows
        assert [tuple(r) for r in rec.tables.rejects("rec-run")] == [(3, "c", "empty prompt")]
        assert not rec.any_stored_image()
    assert ledger.find_run_by_identity("rec-run") is not None
    assert ledger.get_batch(opened.id).item_count == 2
    assert ledger.item_counts("rec-run") == {"in_batch": 2}


def test_recording_rolls_everything_back_when_its_block_raises(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.recording(_new_run("lost-run")) as rec:
        opened = rec.open_batch(MODEL, NOW)
        rows = [("lost-run", "a", 0, "p", "s", "1:1", "1K", MODEL, 10)]
        rec.items(rows, state="in_batch", batch_id=opened.id, rich=False)
        raise RuntimeError("killed mid-recording")
    assert ledger.find_run_by_identity("lost-run") is None
    assert _count(ledger, repo.BATCHES) == 0
    assert _count(ledger, repo.ITEMS) == 0
