"""Shared helpers for the feature tests: job specs on disk, a Context on the emulator, and
ticking a run to its end with the emulator's clock pushed forward."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.adapters.config import Settings
from pipeline.adapters.ledger import db, repo
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator
from pipeline.shell.context import Context
from pipeline.shell.intake import create_run
from pipeline.shell.planning import load_spec
from pipeline.shell.tick import tick
from tests import specs

PRO = "gemini-3-pro-image-preview"
FLASH = "gemini-3.1-flash-image-preview"
KEY = "feature-test-key"


def write_job(
    folder: Path,
    name: str,
    rows: Sequence[dict[str, str]],
    *,
    model: str = PRO,
    ratio: str = "1:1",
    size: str = "1K",
    budget: float | None = None,
    per_batch: int = 1000,
    out: str | None = None,
    max_attempts: int = 3,
) -> Path:
    """A job spec and its CSV (columns key, prompt, and any per-row overrides)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = specs.write_table(folder / f"{name}.csv", rows)
    return specs.write_spec(
        folder / f"{name}.toml",
        name=name,
        model=model,
        input_path=table.name,
        id_column="key",
        prompt_column="prompt",
        aspect_ratio=ratio,
        size=size,
        output=out or str(folder / "out" / "{run}"),
        limits={
            "max_attempts": max_attempts,
            "budget_usd": budget,
            "max_requests_per_batch": per_batch,
        },
    )


def make_context(tmp: Path, emu: Emulator | None, **settings: Any) -> Context:
    """A Context on a SQLite ledger in `tmp`, talking to `emu`."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp}/ledger.db",
        "api_key": KEY,
        "base_url": emu.url if emu is not None else None,
        "state_dir": tmp / "state",
        "worker_id": "feature-test",
        "create_backoff_s": 0.01,
    }
    values.update(settings)
    engine = db.make_engine(values["database_url"])
    db.ensure_schema(engine)
    return Context(settings=Settings(**values), ledger=Ledger(engine))


def submit(ctx: Context, spec: Path, *, use_cache: bool = True, force: bool = True) -> str:
    """Record a run of `spec` (no tick); returns its id."""
    catalog = load_catalog()
    run_id, _ = create_run(ctx, load_spec(spec, catalog), catalog, force=force, use_cache=use_cache)
    return run_id


def run_to_end(ctx: Context, emu: Emulator, run_id: str, max_ticks: int = 30) -> repo.RunRow:
    """Tick (pushing the emulator's clock on) until the run is no longer active."""
    catalog = load_catalog()
    for _ in range(max_ticks):
        tick(ctx, catalog)
        with ctx.ledger.engine.connect() as conn:
            run = repo.get_run(conn, run_id)
        if run.state != "active":
            return run
        emu.clock.advance(10_000)
    raise AssertionError(f"run {run_id} did not finish in {max_ticks} ticks")


def report_json(ctx: Context, run_id: str) -> dict[str, Any]:
    """The run's report as `report --format json` prints it."""
    import io
    import json

    from pipeline.shell.reporting import render_report

    buf = io.StringIO()
    render_report(ctx, run_id, "json", buf, None)
    return dict(json.loads(buf.getvalue()))
