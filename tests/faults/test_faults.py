"""Fault injection: the CLI against the emulator's faults, checked item by item (status,
attempts, error reason, cost)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from faults_helpers import API_KEY, FALLBACK, MODEL, Drill, check_exactly_once, line_cost_nanos

from pipeline.core.naming import object_name
from pipeline.emulator import Emulator, FaultPlan


def plan(**faults: object) -> FaultPlan:
    return FaultPlan.from_dict(dict(faults))


def run_to_end(drill: Drill, n: int = 4, **spec: object) -> str:
    drill.write_spec(n, **spec)  # type: ignore[arg-type]
    run = drill.submit()
    drill.tick_until_done(run)
    return run


@pytest.mark.parametrize("status", [429, 503])
def test_create_errors_back_off_then_create_once(drill: Drill, status: int) -> None:
    """Create answering 429/503 records not_before; later ticks create each shard once."""
    drill.emu.faults = plan(create_errors=[{"status": status, "times": 2}])
    drill.write_spec(4)
    run = drill.submit()
    backed = drill.query("SELECT not_before, last_error FROM batches WHERE not_before IS NOT NULL")
    assert backed and str(status) in backed[0].last_error
    drill.tick_until_done(run)
    check_exactly_once(drill, run, 4)
    assert len(drill.emu.batches()) == 2
    refused = [e for e in drill.emu.request_log if e.get("kind") == "create" and e["status"] != 200]
    assert len(refused) == 2


@pytest.mark.parametrize("state", ["FAILED", "EXPIRED"])
def test_batch_without_output_is_retried(drill: Drill, state: str) -> None:
    """A batch FAILED or EXPIRED without output: its items go again in a new batch."""
    drill.emu.faults = plan(batch_faults=[{"state": state, "next": 1}])
    run_to_end(drill, 4)
    items = drill.items()
    assert {r.state for r in items.values()} == {"succeeded"}
    assert sorted(r.tries for r in items.values()) == [1, 1, 2, 2]
    assert len(drill.emu.batches()) == 3


@pytest.mark.parametrize("code", [429, 500, 503, 504, 8, 13, 14])
def test_retryable_line_errors(drill: Drill, code: int) -> None:
    """Retryable per-line errors are retried up to max_attempts, then failed with the reason."""
    drill.emu.faults = plan(
        line_faults=[
            {"kind": "error", "code": code, "keys": ["img-0"]},
            {"kind": "error", "code": code, "keys": ["img-1"], "times": 1},
        ]
    )
    run_to_end(drill, 4, max_attempts=2)
    items = drill.items()
    assert (items["img-0"].state, items["img-0"].final, items["img-0"].tries) == ("failed", 0, 2)
    assert str(code) in items["img-0"].error
    assert items["img-0"].reason_code == ("grpc_retryable" if code < 100 else "http_retryable")
    assert (items["img-1"].state, items["img-1"].tries) == ("succeeded", 2)
    assert items["img-2"].tries == items["img-3"].tries == 1


@pytest.mark.parametrize("code", [400, 3])
def test_bad_request_lines_fail_for_good(drill: Drill, code: int) -> None:
    """Per-line 400 / gRPC 3 fail for good after one attempt."""
    drill.emu.faults = plan(line_faults=[{"kind": "error", "code": code, "keys": ["img-0"]}])
    run_to_end(drill, 4)
    row = drill.items()["img-0"]
    assert (row.state, bool(row.final), row.tries) == ("failed", True, 1)
    assert str(code) in row.error
    assert row.reason_code == ("grpc_final" if code < 100 else "http_final")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("finish", "IMAGE_SAFETY"),
        ("finish", "SAFETY"),
        ("finish", "PROHIBITED_CONTENT"),
        ("block", "PROHIBITED_CONTENT"),
    ],
)
def test_safety_blocks_fail_for_good_without_fallback(drill: Drill, kind: str, reason: str) -> None:
    """Safety blocks fail for good on the first try; the fallback model is not tried."""
    drill.emu.faults = plan(line_faults=[{"kind": kind, "reason": reason, "keys": ["img-0"]}])
    run_to_end(drill, 2, fallback=FALLBACK)
    row = drill.items()["img-0"]
    assert (row.state, bool(row.final), row.tries, row.model) == ("failed", True, 1, MODEL)
    assert reason in row.error
    assert row.reason_code == ("safety" if kind == "finish" else "prompt_blocked")
    assert {a.model for a in drill.attempts() if a.key == "img-0"} == {MODEL}


@pytest.mark.parametrize("kind", ["text_only", "missing"])
def test_text_only_and_missing_lines_are_retried(drill: Drill, kind: str) -> None:
    """A text-only answer or a missing line is retried and then succeeds."""
    drill.emu.faults = plan(line_faults=[{"kind": kind, "keys": ["img-1"], "times": 1}])
    run_to_end(drill, 4)
    items = drill.items()
    assert {r.state for r in items.values()} == {"succeeded"}
    assert items["img-1"].tries == 2
    reasons = [a.reason for a in drill.attempts() if a.key == "img-1" and a.outcome == "retry"]
    assert len(reasons) == 1 and reasons[0]
    codes = [a.reason_code for a in drill.attempts() if a.key == "img-1" and a.outcome == "retry"]
    assert codes == ["no_image" if kind == "text_only" else "missing"]


def test_shuffled_results_join_by_key(drill: Drill) -> None:
    """Results in a shuffled order still land on the right items, exactly once."""
    drill.emu.faults = plan(shuffle=True, seed=7)
    run = run_to_end(drill, 6, per_batch=6)
    check_exactly_once(drill, run, 6)
    for line in drill.result_lines():
        assert drill.items()[line["key"]].state == "succeeded"


def test_interrupted_download_leaves_batch_harvestable(drill: Drill) -> None:
    """A broken download ends the tick with 1; the batch stays done; the next tick finishes."""
    drill.emu.faults = plan(download={"drop_after_bytes": 500, "drop_times": 1})
    drill.write_spec(2, per_batch=2)
    run = drill.submit()
    codes = [drill.tick(600).code for _ in range(2)]
    assert 1 in codes
    assert drill.query("SELECT state FROM batches")[0][0] in ("done", "harvested")
    drill.tick_until_done(run)
    check_exactly_once(drill, run, 2)


def test_fallback_model_gets_one_try(drill: Drill) -> None:
    """A non-safety final failure gets one try on fallback_model, costed at its price."""
    drill.emu.faults = plan(
        line_faults=[{"kind": "error", "code": 3, "keys": ["img-0"], "times": 1}]
    )
    run = run_to_end(drill, 2, fallback=FALLBACK)
    row = drill.items()["img-0"]
    assert (row.state, row.model) == ("succeeded", FALLBACK)
    tried = [a for a in drill.attempts() if a.key == "img-0"]
    assert [a.model for a in tried] == [MODEL, FALLBACK]
    fb_lines = [ln for ln in drill.result_lines() if ln["key"] == "img-0" and "response" in ln]
    fb_line = [ln for ln in fb_lines if ln["response"].get("candidates")][-1]
    assert tried[1].cost_nanos == line_cost_nanos(fb_line, FALLBACK)
    item = next(i for i in drill.report(run)["items"] if i["key"] == "img-0")
    assert item["attempts"] == 2 and item["status"] == "succeeded"


def test_retry_and_retry_include_final(drill: Drill) -> None:
    """`retry` requeues failed items; `--include-final` also those failed for good."""
    drill.emu.faults = plan(
        line_faults=[
            {"kind": "error", "code": 13, "keys": ["img-0"], "times": 2},
            {"kind": "error", "code": 3, "keys": ["img-1"], "times": 1},
        ]
    )
    run = run_to_end(drill, 3, max_attempts=2)
    items = drill.items()
    assert (items["img-0"].state, bool(items["img-0"].final)) == ("failed", False)
    assert (items["img-1"].state, bool(items["img-1"].final)) == ("failed", True)
    assert "requeued 1 items" in drill.cli("retry", run).err
    drill.tick_until_done(run)
    assert drill.items()["img-0"].state == "succeeded"
    assert drill.items()["img-1"].state == "failed"
    assert "requeued 1 items" in drill.cli("retry", run, "--include-final").err
    drill.tick_until_done(run)
    assert {r.state for r in drill.items().values()} == {"succeeded"}
    report = drill.report(run)
    assert sum(i["cost_usd"] for i in report["items"]) == pytest.approx(
        report["summary"]["cost_usd"]
    )


def test_cancel_mid_flight(tmp_path: Path, sqlite_url: str) -> None:
    """`cancel` cancels live batches; items without results become cancelled."""
    with Emulator(image_scale=0.02, pending_seconds=3600, running_seconds=3600) as emu:
        drill = Drill(tmp_path, emu, sqlite_url)
        drill.write_spec(4)
        run = drill.submit()
        assert {b["state"] for b in emu.batches()} == {"BATCH_STATE_PENDING"}
        res = drill.cli("cancel", run)
        assert res.code == 0, res.err
        assert {b["state"] for b in emu.batches()} == {"BATCH_STATE_CANCELLED"}
        drill.tick()
        assert {r.state for r in drill.items().values()} == {"cancelled"}
        assert drill.run_state(run) == "cancelled"
        assert drill.status(run)["items"]["cancelled"] == 4


@pytest.mark.parametrize("when", ["before_submit", "after_submit"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_object_with_other_bytes(drill: Drill, overwrite: bool, when: str) -> None:
    """A different object at the name fails the item for good, unless overwrite: before
    anything is sent when it is there at submit (no try, nothing paid), and at harvest when it
    appears after submit (the store's create-only write refuses it)."""
    drill.write_spec(2, overwrite=overwrite)
    (drill.tmp / "out").mkdir()
    if when == "before_submit":
        (drill.tmp / "out" / "img-0.png").write_bytes(b"not this image")
    run = drill.submit()
    if when == "after_submit":
        (drill.tmp / "out" / "img-0.png").write_bytes(b"not this image")
    drill.tick_until_done(run)
    row = drill.items()["img-0"]
    if overwrite:
        assert row.state == "succeeded"
        assert (drill.tmp / "out" / "img-0.png").read_bytes() != b"not this image"
    else:
        tries = 0 if when == "before_submit" else 1
        assert (row.state, bool(row.final), row.tries) == ("failed", True, tries)
        assert "overwrite" in row.error and "img-0.png" in row.error
        assert row.reason_code == "conflict"
        assert (drill.tmp / "out" / "img-0.png").read_bytes() == b"not this image"
        sent = [e for e in drill.emu.request_log if e.get("kind") == "line"]
        assert len([e for e in sent if e["key"] == "img-0"]) == tries
    assert drill.items()["img-1"].state == "succeeded"
    assert drill.report(run)["summary"]["items"] == 2


def test_unsafe_keys_get_safe_distinct_names(drill: Drill) -> None:
    """Keys with slashes, `..`, control characters or 300 chars are stored under safe names."""
    keys = ["a/b", "a_b", "..", "../up", "ctl\x01x", "k" * 300, "ok-1"]
    drill.write_spec(keys=["placeholder"], per_batch=10)
    with (drill.tmp / "prompts.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "title"])
        writer.writerows([k, f"thing {i}"] for i, k in enumerate(keys))
    run = drill.submit()
    drill.tick_until_done(run)
    items = drill.items()
    assert {r.state for r in items.values()} == {"succeeded"}, items
    names = {k: object_name(k, "png") for k in keys}
    assert len(set(names.values())) == len(keys)
    for key, name in names.items():
        assert "/" not in name and name not in (".png", "..png") and len(name) <= 200
        assert (drill.out_dir / name).is_file()
        assert items[key].uri.endswith(name)
    assert names["ok-1"] == "ok-1.png"
    assert not list(drill.tmp.glob("up*")) and not (drill.tmp / "a").exists()


def test_wrong_api_key_exit_2(tmp_path: Path, sqlite_url: str) -> None:
    """A refused key: exit 2, the message names GEMINI_API_KEY and never shows the key."""
    with Emulator(image_scale=0.02, api_key="the-right-key") as emu:
        drill = Drill(tmp_path, emu, sqlite_url)
        drill.write_spec(2)
        res = drill.cli("submit", str(drill.spec))
        assert res.code == 2, res.err
        assert "GEMINI_API_KEY" in res.err and API_KEY not in res.err + res.out


def test_api_key_never_stored_or_logged(drill: Drill) -> None:
    """The key appears in no log line, ledger, spool or output file."""
    drill.emu.faults = plan(
        line_faults=[{"kind": "error", "code": 13, "keys": ["img-0"], "times": 1}]
    )
    drill.write_spec(4)
    res = drill.sub("run", str(drill.spec), "--poll-interval", "0.1", "--json")
    assert res.code == 0, res.err
    assert API_KEY not in res.out + res.err
    needle = API_KEY.encode()
    for path in drill.tmp.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
