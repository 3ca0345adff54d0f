"""Every fault kind, observed through what the real SDK returns."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import PRO, file_batch, finish, request, results
from google.genai import errors

from pipeline.emulator import Emulator, FaultPlan

ROWS = [(f"k{i}", request(f"prompt {i}")) for i in range(6)]


def test_create_429_then_503_then_ok(emu: Emulator, client: Any, tmp_path: Path) -> None:
    emu.faults = FaultPlan.from_dict(
        {"create_errors": [{"status": 429, "times": 2}, {"status": 503, "times": 1}]}
    )
    for _ in range(2):
        with pytest.raises(errors.ClientError) as exc:
            file_batch(client, tmp_path, ROWS[:1])
        assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(errors.ServerError) as server_exc:
        file_batch(client, tmp_path, ROWS[:1])
    assert server_exc.value.code == 503
    assert file_batch(client, tmp_path, ROWS[:1]).state.name == "JOB_STATE_PENDING"
    assert len(emu.batches()) == 1


def test_get_error(emu: Emulator, client: Any, tmp_path: Path) -> None:
    job = file_batch(client, tmp_path, ROWS[:1])
    emu.faults.get_errors = FaultPlan.from_dict({"get_errors": [{"status": 503}]}).get_errors
    with pytest.raises(errors.ServerError):
        client.batches.get(name=job.name)
    assert client.batches.get(name=job.name).name == job.name


def test_failed_and_expired_batches(emu: Emulator, client: Any, tmp_path: Path) -> None:
    emu.faults = FaultPlan.from_dict(
        {
            "batch_faults": [
                {"state": "FAILED", "display_name_contains": "doomed"},
                {"state": "EXPIRED", "next": 1},
            ]
        }
    )
    doomed = file_batch(client, tmp_path, ROWS[:1], name="doomed-1")
    expired = file_batch(client, tmp_path, ROWS[:1], name="plain-1")
    fine = file_batch(client, tmp_path, ROWS[:1], name="plain-2")
    emu.clock.advance(10_000)
    got = {
        n: client.batches.get(name=j.name) for n, j in (("d", doomed), ("e", expired), ("f", fine))
    }
    assert got["d"].state.name == "JOB_STATE_FAILED" and got["d"].dest is None
    assert got["e"].state.name == "JOB_STATE_EXPIRED" and got["e"].dest is None
    assert got["f"].state.name == "JOB_STATE_SUCCEEDED"


def test_line_errors_with_retry(emu: Emulator, client: Any, tmp_path: Path) -> None:
    emu.faults = FaultPlan.from_dict(
        {
            "line_faults": [
                {"kind": "error", "code": 13, "keys": ["k0"], "times": 1},
                {"kind": "error", "code": 3, "keys": ["k1"], "message": "bad prompt"},
                {"kind": "error", "code": 503, "keys": ["k2"]},
            ]
        }
    )
    job = file_batch(client, tmp_path, ROWS[:4])
    out = {r["key"]: r for r in results(client, finish(emu, client, job.name), tmp_path)}
    assert out["k0"]["error"]["code"] == 13
    assert out["k1"]["error"] == {"code": 3, "message": "bad prompt"}
    assert out["k2"]["error"]["code"] == 503 and "response" in out["k3"]
    again = file_batch(client, tmp_path, ROWS[:2], name="retry")
    out = {r["key"]: r for r in results(client, finish(emu, client, again.name), tmp_path)}
    assert "response" in out["k0"] and out["k1"]["error"]["code"] == 3


def test_safety_block_text_only(emu: Emulator, client: Any, tmp_path: Path) -> None:
    emu.faults = FaultPlan.from_dict(
        {
            "line_faults": [
                {"kind": "finish", "reason": "IMAGE_SAFETY", "keys": ["k0"]},
                {"kind": "finish", "reason": "PROHIBITED_CONTENT", "keys": ["k1"]},
                {"kind": "block", "reason": "SAFETY", "keys": ["k2"]},
                {"kind": "text_only", "keys": ["k3"]},
            ]
        }
    )
    job = file_batch(client, tmp_path, ROWS[:4])
    out = {
        r["key"]: r["response"] for r in results(client, finish(emu, client, job.name), tmp_path)
    }
    assert out["k0"]["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert "content" not in out["k0"]["candidates"][0]
    assert out["k1"]["candidates"][0]["finishReason"] == "PROHIBITED_CONTENT"
    assert (
        out["k2"]["promptFeedback"] == {"blockReason": "SAFETY"} and "candidates" not in out["k2"]
    )
    (cand,) = out["k3"]["candidates"]
    assert cand["finishReason"] == "STOP" and [list(p) for p in cand["content"]["parts"]] == [
        ["text"]
    ]


def test_safety_in_inline_batch_through_sdk_types(emu: Emulator, client: Any) -> None:
    emu.faults = FaultPlan.from_dict(
        {
            "line_faults": [
                {"kind": "block", "reason": "PROHIBITED_CONTENT", "keys": ["a"]},
                {"kind": "error", "code": 8, "keys": ["b"]},
            ]
        }
    )
    src = [{"contents": "x", "metadata": {"key": k}} for k in ("a", "b")]
    done = finish(emu, client, client.batches.create(model=PRO, src=src).name)
    a, b = done.dest.inlined_responses
    assert a.response.prompt_feedback.block_reason.name == "PROHIBITED_CONTENT"
    assert b.error.code == 8


def test_missing_line_and_shuffle(emu: Emulator, client: Any, tmp_path: Path) -> None:
    emu.faults = FaultPlan.from_dict(
        {"seed": 7, "shuffle": True, "line_faults": [{"kind": "missing", "keys": ["k4"]}]}
    )
    job = file_batch(client, tmp_path, ROWS)
    keys = [r["key"] for r in results(client, finish(emu, client, job.name), tmp_path)]
    assert sorted(keys) == ["k0", "k1", "k2", "k3", "k5"] and keys != sorted(keys)
    outcomes = {e["key"]: e["outcome"] for e in emu.request_log if e["kind"] == "line"}
    assert outcomes["k4"] == "missing"


def test_rate_faults_are_reproducible(tmp_path: Path) -> None:
    plan = {"seed": 3, "line_faults": [{"kind": "error", "code": 14, "rate": 0.5}]}
    picked = [
        [FaultPlan.from_dict(plan).line_fault(f"key{i}") is not None for i in range(200)]
        for _ in range(2)
    ]
    assert picked[0] == picked[1] and 60 < sum(picked[0]) < 140


def test_interrupted_download(emu: Emulator, client: Any, tmp_path: Path) -> None:
    job = file_batch(client, tmp_path, ROWS)
    done = finish(emu, client, job.name)
    emu.faults.download.drop_after_bytes = 1000
    with pytest.raises(Exception, match=r"(?i)peer closed|incomplete|protocol"):
        client.files.download(file=done.dest.file_name, destination=str(tmp_path / "o"))
    assert len(results(client, done, tmp_path)) == 6


def test_slow_download(emu: Emulator, client: Any, tmp_path: Path) -> None:
    job = file_batch(client, tmp_path, ROWS[:1])
    done = finish(emu, client, job.name)
    size = client.files.get(name=done.dest.file_name).size_bytes
    emu.faults.download.bytes_per_second = size * 2
    start = time.perf_counter()
    results(client, done, tmp_path)
    assert time.perf_counter() - start >= 0.4


def test_plan_from_json_and_toml_files(tmp_path: Path) -> None:
    data = {
        "seed": 1,
        "create_errors": [{"status": 429, "times": 2}],
        "line_faults": [{"kind": "finish", "reason": "SAFETY", "rate": 0.1}],
        "download": {"drop_after_bytes": 10, "drop_times": 2},
    }
    (tmp_path / "p.json").write_text(json.dumps(data))
    (tmp_path / "p.toml").write_text(
        "seed = 1\nshuffle = false\n[[create_errors]]\nstatus = 429\ntimes = 2\n"
        '[[line_faults]]\nkind = "finish"\nreason = "SAFETY"\nrate = 0.1\n'
        "[download]\ndrop_after_bytes = 10\ndrop_times = 2\n"
    )
    assert FaultPlan.from_file(tmp_path / "p.json") == FaultPlan.from_file(tmp_path / "p.toml")
    with pytest.raises(ValueError, match="unknown"):
        FaultPlan.from_dict({"nope": 1})


def test_shuffle_never_leaves_lines_in_order() -> None:
    """The shuffle fault always reorders: seed 7 on batch `b160` is a shuffle that happens to
    be the identity for five lines (one time in 120; the test above once met it in CI)."""
    import random

    from pipeline.emulator.batches import _out_of_order

    plain = list(range(5))
    random.Random("7:b160").shuffle(plain)
    assert plain == sorted(plain)  # the case this guards
    lines = list(range(5))
    _out_of_order(lines, 7, "b160")
    assert sorted(lines) == [0, 1, 2, 3, 4] and lines != sorted(lines)
