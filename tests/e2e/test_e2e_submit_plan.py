"""`submit` is idempotent and `plan` is a dry run: what each sends, prints and touches."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

PLAN_KEYS = {"items", "rejected", "batches", "estimate", "quota_windows"}


def test_submit_twice_is_one_run(e2e: Any) -> None:
    """A second submit prints the same run id and sends nothing; --force makes a new run."""
    # Each run in its own folder: the forced run's keys would otherwise be names the first
    # run is making there, and fail before sending (tests/features/test_shared_output.py).
    e2e.write_spec(output="out/{job}/{run}")
    first = e2e.invoke("submit", str(e2e.spec_path))
    assert first.code == 0, first.stderr
    run_id = first.stdout.strip()
    assert first.stdout == run_id + "\n"
    assert run_id.startswith("e2e-job-")
    kinds = e2e.kinds()
    assert kinds.count("create") == 2  # 4 items, 2 per batch

    sent = len(e2e.emu.request_log)
    second = e2e.invoke("submit", str(e2e.spec_path))
    assert second.code == 0, second.stderr
    assert second.stdout == first.stdout
    assert len(e2e.emu.request_log) == sent

    # From another working directory the relative paths resolve the same: the same run.
    elsewhere = e2e.tmp / "elsewhere"
    elsewhere.mkdir()
    e2e.monkeypatch.chdir(elsewhere)
    third = e2e.invoke("submit", str(e2e.spec_path))
    assert third.stdout == first.stdout
    assert len(e2e.emu.request_log) == sent

    forced = e2e.invoke("submit", str(e2e.spec_path), "--force", "--no-cache")
    assert forced.code == 0, forced.stderr
    assert forced.stdout.strip() != run_id
    assert e2e.kinds().count("create") == 4
    status = e2e.invoke("status", "--json").json()
    assert sorted(r["run"] for r in status["runs"]) == sorted([run_id, forced.stdout.strip()])


@pytest.mark.parametrize(("per_batch", "batches"), [(1, 4), (2, 2), (3, 2), (1000, 1)])
def test_plan_json(e2e: Any, per_batch: int, batches: int) -> None:
    """plan --json: integer counts, batches within max_requests_per_batch, half-price estimate."""
    e2e.write_spec(max_requests_per_batch=per_batch)
    result = e2e.invoke("plan", str(e2e.spec_path), "--json")
    assert result.code == 0, result.stderr
    plan = result.json()
    assert set(plan) >= PLAN_KEYS
    for name in ("items", "rejected", "batches", "quota_windows"):
        assert type(plan[name]) is int, name
    assert (plan["items"], plan["rejected"], plan["batches"]) == (4, 1, batches)
    est = plan["estimate"]
    assert est["batch_usd"] > 0
    assert est["standard_usd"] == pytest.approx(2 * est["batch_usd"], abs=2e-6)
    assert plan["quota_windows"] == 1
    # plan touches neither the network nor the ledger.
    assert e2e.emu.request_log == []
    assert not (e2e.tmp / "ledger.db").exists()
    assert not e2e.state_dir.exists()
    assert not (e2e.tmp / "out").exists()


def test_plan_quota_windows(e2e: Any) -> None:
    """quota_windows is ceil(estimated tokens / max_enqueued_tokens)."""
    e2e.write_spec(max_enqueued_tokens=1500)
    result = e2e.invoke("plan", str(e2e.spec_path), "--json")
    assert result.code == 0, result.stderr
    plan = result.json()
    tokens = plan["estimate"]["tokens"]
    # Each Pro 1K image alone is 1120 output tokens, plus the prompt's.
    assert tokens > 4 * 1120
    assert plan["quota_windows"] == math.ceil(tokens / 1500)
    assert plan["quota_windows"] >= 4
    text = e2e.invoke("plan", str(e2e.spec_path))
    assert text.code == 0
    assert f"{plan['quota_windows']} quota window" in text.stdout
    assert e2e.emu.request_log == []
    assert not Path(e2e.tmp / "ledger.db").exists()
