"""Budgets: the run's budget_usd and the daily cap hold work back (estimates of live batches
are reserved), `status --json` says why, `plan` estimates per model and size, and
overlapping tick processes never overspend."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from pipeline.adapters.ledger import repo
from pipeline.core import pricing
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator
from pipeline.shell.planning import load_spec, make_plan
from pipeline.shell.reporting import run_status
from pipeline.shell.tick import tick
from tests.features.helpers import KEY, PRO, make_context, submit, write_job

LIVE = ("submitting", "running", "done", "harvested")


def _rows(n: int) -> list[dict[str, str]]:
    return [{"key": f"k{i:03d}", "prompt": f"a tiny cube number {i:03d}"} for i in range(n)]


def _one_estimate() -> int:
    info = load_catalog().get(PRO)
    return pricing.estimate_cost_nanos(info, "1K", "a tiny cube number 000", "batch")


def _created_nanos(ctx: object, run_id: str) -> int:
    with ctx.ledger.engine.connect() as conn:  # type: ignore[attr-defined]
        return sum(b.est_nanos for b in repo.batches_of_run(conn, run_id) if b.state in LIVE)


def test_run_budget_holds_work_and_status_says_why(tmp_path: Path, emu: Emulator) -> None:
    """Batches beyond limits.budget_usd wait; status shows waiting, reserved and left."""
    one = _one_estimate()
    budget = 2.5 * one / 1e9
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "capped", _rows(5), per_batch=1, budget=budget))
    tick(ctx, load_catalog())
    assert _created_nanos(ctx, run_id) == 2 * one
    with ctx.ledger.engine.connect() as conn:
        run = repo.get_run(conn, run_id)
    status = run_status(ctx, run)
    assert status["waiting"] and "run budget" in status["waiting"]
    assert status["waiting_code"] == "run_budget"
    assert status["reserved_usd"] == 2 * one / 1e9
    assert status["budget_left_usd"] == round(budget - 2 * one / 1e9, 9)
    assert status["batches"] == {"running": 2, "queued": 3}


def test_daily_cap_holds_work_across_runs(tmp_path: Path, emu: Emulator) -> None:
    """NANOBATCH_DAILY_BUDGET_USD caps all runs together; status carries the daily figures."""
    one = _one_estimate()
    cap = Decimal(3 * one + one // 2) / Decimal(10**9)
    ctx = make_context(tmp_path, emu, daily_budget_usd=cap)
    first = submit(ctx, write_job(tmp_path / "a", "first", _rows(2), per_batch=1))
    second = submit(ctx, write_job(tmp_path / "b", "second", _rows(3), per_batch=1))
    tick(ctx, load_catalog())
    assert _created_nanos(ctx, first) + _created_nanos(ctx, second) == 3 * one
    with ctx.ledger.engine.connect() as conn:
        run = repo.get_run(conn, second)
    status = run_status(ctx, run)
    assert "daily budget" in status["waiting"]
    assert status["waiting_code"] == "daily_budget"
    daily = status["daily"]
    assert daily["cap_usd"] == float(cap)
    assert daily["reserved_usd"] == 3 * one / 1e9 and daily["spent_usd"] == 0
    assert abs(daily["left_usd"] - (float(cap) - 3 * one / 1e9)) < 1e-9


def test_plan_estimates_per_model_and_size(tmp_path: Path) -> None:
    """`plan` breaks the estimate down by model and image size."""
    rows = [
        {"key": "a", "prompt": "one", "image_size": ""},
        {"key": "b", "prompt": "two", "image_size": "2K"},
        {"key": "c", "prompt": "three", "image_size": "4K"},
    ]
    catalog = load_catalog()
    plan = make_plan(load_spec(write_job(tmp_path, "sizes", rows), catalog), catalog).asdict()
    by_size = plan["estimate"]["by_size"]  # type: ignore[index]
    assert set(by_size) == {f"{PRO} 1K", f"{PRO} 2K", f"{PRO} 4K"}
    info = catalog.get(PRO)
    assert by_size[f"{PRO} 4K"]["batch_usd"] == round(
        pricing.estimate_cost_nanos(info, "4K", "three", "batch") / 1e9, 6
    )
    assert by_size[f"{PRO} 4K"]["batch_usd"] > by_size[f"{PRO} 1K"]["batch_usd"]


def test_budget_holds_under_concurrent_ticks(tmp_path: Path, emu: Emulator) -> None:
    """Several tick processes at once never create batches whose estimates pass the budget."""
    one = _one_estimate()
    budget = 3.5 * one / 1e9
    ctx = make_context(tmp_path, emu, daily_budget_usd=Decimal(5 * one) / Decimal(10**9))
    capped = submit(ctx, write_job(tmp_path / "a", "capped", _rows(8), per_batch=1, budget=budget))
    other = submit(ctx, write_job(tmp_path / "b", "other", _rows(8), per_batch=1))
    env = {
        **os.environ,
        "NANOBATCH_DATABASE_URL": ctx.settings.database_url,
        "NANOBATCH_STATE_DIR": str(tmp_path / "state"),
        "NANOBATCH_DAILY_BUDGET_USD": str(Decimal(5 * one) / Decimal(10**9)),
        "GEMINI_API_KEY": KEY,
        "GOOGLE_GEMINI_BASE_URL": emu.url,
        "NANOBATCH_LOG_FORMAT": "json",
        # This checkout's pipeline, not whichever one the virtualenv has installed.
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "tick"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err.decode()[-800:] for _, err in outputs]
    assert _created_nanos(ctx, capped) <= budget * 1e9
    assert _created_nanos(ctx, capped) + _created_nanos(ctx, other) <= 5 * one
    assert _created_nanos(ctx, capped) + _created_nanos(ctx, other) >= 4 * one  # work did go
    names = [b["displayName"] for b in emu.batches()]
    assert len(names) == len(set(names))


def test_one_pass_sums_recorded_costs_once(tmp_path: Path, emu: Emulator) -> None:
    """Summing a run's recorded costs reads all its attempts: a pass creating many batches
    does it once and counts its own reservations (here all 12 fit the budget)."""
    from sqlalchemy import event

    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "many", _rows(12), per_batch=1, budget=1000.0))
    cost_sums: list[str] = []

    @event.listens_for(ctx.ledger.engine, "before_cursor_execute")
    def _spy(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "sum(attempts.cost_nanos)" in statement:
            cost_sums.append(statement)

    tick(ctx, load_catalog())
    assert _created_nanos(ctx, run_id) == 12 * _one_estimate()
    assert len(cost_sums) == 1


def test_run_spend_sums_costs_through_finished_batches(tmp_path: Path, emu: Emulator) -> None:
    """A run's spend is read through its finished batches only: the same sum as over every
    attempt of the run, at every stage, with the run's waiting batches not read at all."""
    from sqlalchemy import text

    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "spend", _rows(5), per_batch=2, budget=1000.0))

    def every_attempt() -> int:
        with ctx.ledger.engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT coalesce(sum(a.cost_nanos), 0) FROM attempts a "
                        "JOIN items i ON i.id = a.item_id WHERE i.run_id = :run"
                    ),
                    {"run": run_id},
                ).scalar_one()
            )

    def spent() -> int:
        with ctx.ledger.engine.connect() as conn:
            return repo.run_spend(conn, run_id)[0]

    assert spent() == every_attempt() == 0
    seen = set()
    for _ in range(30):
        tick(ctx, load_catalog())
        assert spent() == every_attempt()
        seen.add(spent())
        with ctx.ledger.engine.connect() as conn:
            if repo.get_run(conn, run_id).state != "active":
                break
        emu.clock.advance(10_000)
    assert spent() > 0 and len(seen) > 1  # costs came in along the way, and were counted
