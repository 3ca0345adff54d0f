"""Raising a run's budget without a new run (issue 13, item 8): `nanobatch budget RUN --usd X`
stores the cap in the ledger for that run, the budget checks use it, the messages of `run`
and `status` point at it, and `plan` warns when its estimate passes budget_usd."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.ledger import repo
from pipeline.core import pricing
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator
from pipeline.shell.reporting import run_status
from pipeline.shell.tick import tick
from tests.features.helpers import KEY, PRO, make_context, run_to_end, submit, write_job

PROMPT = "a tiny cube number {i:03d}"


def _rows(n: int) -> list[dict[str, str]]:
    return [{"key": f"k{i:03d}", "prompt": PROMPT.format(i=i)} for i in range(n)]


def _one() -> int:
    """The batch-price estimate of one item, in nano-dollars."""
    info = load_catalog().get(PRO)
    return pricing.estimate_cost_nanos(info, "1K", PROMPT.format(i=0), "batch")


@dataclass
class Cli:
    """`nanobatch` in this process, on the test's ledger and emulator."""

    capsys: Any

    def __call__(self, *args: str) -> tuple[int, str, str]:
        from pipeline.cli import main

        self.capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def fast_emu() -> Iterator[Emulator]:
    """Batches end a fraction of a second after they are created."""
    with Emulator(image_scale=0.02, pending_seconds=0.05, running_seconds=0.1) as e:
        yield e


@pytest.fixture
def cli(
    tmp_path: Path, db_url: str, fast_emu: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> Cli:
    monkeypatch.setenv("NANOBATCH_DATABASE_URL", db_url)
    monkeypatch.setenv("NANOBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fast_emu.url)
    monkeypatch.setenv("NANOBATCH_LOG_FORMAT", "json")
    return Cli(capsys)


def test_budget_command_raises_the_runs_cap_and_the_same_run_goes_on(
    tmp_path: Path, db_url: str, fast_emu: Emulator, cli: Cli
) -> None:
    """Work held by the run's budget goes on after `budget RUN --usd X`: same run, the new
    cap in status, and status's waiting line named the command before."""
    one = _one()
    ctx = make_context(tmp_path, fast_emu, database_url=db_url)
    spec = write_job(tmp_path, "capped", _rows(5), per_batch=1, budget=2.5 * one / 1e9)
    run_id = submit(ctx, spec)
    tick(ctx, load_catalog())
    with ctx.ledger.engine.connect() as conn:
        status = run_status(ctx, repo.get_run(conn, run_id))
    assert status["batches"] == {"running": 2, "queued": 3}
    assert f"nanobatch budget {run_id} --usd" in status["waiting"]

    code, out, err = cli("budget", run_id, "--usd", "1.5")
    assert code == 0, err
    assert run_id in err and "1.5" in err
    with ctx.ledger.engine.connect() as conn:
        assert repo.get_run(conn, run_id).budget_nanos == 1_500_000_000
    code, out, _ = cli("status", run_id, "--json")
    assert json.loads(out)["runs"][0]["budget_usd"] == 1.5

    run = run_to_end(ctx, fast_emu, run_id)
    assert run.state == "finished"
    with ctx.ledger.engine.connect() as conn:
        assert [r.id for r in repo.list_runs(conn)] == [run_id]
        assert repo.item_counts(conn, run_id) == {"succeeded": 5}


def test_run_stopped_by_its_budget_resumes_after_raising_it(tmp_path: Path, cli: Cli) -> None:
    """`run` stops (exit 1) naming `nanobatch budget RUN --usd`; after it, `run SPEC` finishes
    the same run (no second run, nothing orphaned)."""
    spec = write_job(tmp_path, "tight", _rows(3), per_batch=1, budget=0.5 * _one() / 1e9)
    code, _, err = cli("run", str(spec), "--poll-interval", "0.05")
    assert code == 1, err
    message = err.strip().splitlines()[-1]
    assert "run budget" in message and "nanobatch budget" in message
    assert "budget_usd in the spec" not in message
    run_id = message.split("nanobatch budget ", 1)[1].split()[0]

    assert cli("budget", run_id, "--usd", "10")[0] == 0
    code, out, err = cli("run", str(spec), "--poll-interval", "0.05", "--json")
    assert code == 0, err
    assert json.loads(out)["run"] == run_id
    assert json.loads(out)["summary"]["succeeded"] == 3
    code, out, _ = cli("status", "--json")
    assert [r["run"] for r in json.loads(out)["runs"]] == [run_id]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc"])
def test_budget_command_refuses_values_that_are_not_a_positive_amount(
    tmp_path: Path, fast_emu: Emulator, db_url: str, cli: Cli, value: str
) -> None:
    """A budget must be a finite number above 0: exit 2 naming --usd, the cap unchanged."""
    ctx = make_context(tmp_path, fast_emu, database_url=db_url)
    run_id = submit(ctx, write_job(tmp_path, "cap", _rows(1), budget=1.0))
    code, _, err = cli("budget", run_id, "--usd", value)
    assert code == 2, err
    assert "--usd" in err
    with ctx.ledger.engine.connect() as conn:
        assert repo.get_run(conn, run_id).budget_nanos == 1_000_000_000


def test_budget_command_refuses_unknown_and_cancelled_runs(
    tmp_path: Path, fast_emu: Emulator, db_url: str, cli: Cli
) -> None:
    ctx = make_context(tmp_path, fast_emu, database_url=db_url)
    run_id = submit(ctx, write_job(tmp_path, "gone", _rows(1), budget=1.0))
    assert cli("budget", "no-such-run", "--usd", "5")[0] == 2
    assert cli("cancel", run_id)[0] == 0
    code, _, err = cli("budget", run_id, "--usd", "5")
    assert code == 2 and "cancelled" in err


def test_plan_warns_when_the_estimate_exceeds_budget_usd(tmp_path: Path, capsys: Any) -> None:
    """plan: a warning on stderr and under "warnings" in --json when the estimate at batch
    price passes [limits] budget_usd; none when it fits."""
    cli = Cli(capsys)
    over = write_job(tmp_path / "over", "over", _rows(4), budget=1.5 * _one() / 1e9)
    code, out, err = cli("plan", str(over), "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert len(plan["warnings"]) == 1
    warning = plan["warnings"][0]
    assert "budget_usd" in warning and "nanobatch budget" in warning
    assert warning in err
    code, out, err = cli("plan", str(over))
    assert code == 0 and "budget_usd" in err and "budget_usd" not in out

    fits = write_job(tmp_path / "fits", "fits", _rows(4), budget=10.0)
    code, out, err = cli("plan", str(fits), "--json")
    assert code == 0 and json.loads(out)["warnings"] == []
    assert "budget" not in err
