"""The prompt cache: an item whose content hash matches an image an earlier run stored is
copied instead of sent (succeeded, cached, zero cost, no attempt)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipeline.adapters.ledger import repo
from pipeline.emulator import Emulator
from tests.features.helpers import (
    FLASH,
    PRO,
    make_context,
    report_json,
    run_to_end,
    submit,
    write_job,
)

ROWS = [{"key": "a", "prompt": "a red apple"}, {"key": "b", "prompt": "a green pear"}]


def _items(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in report["items"]}


def _first_run(tmp_path: Path, emu: Emulator) -> tuple[Any, dict[str, Any]]:
    ctx = make_context(tmp_path, emu)
    spec = write_job(tmp_path / "one", "one", ROWS)
    run_id = submit(ctx, spec)
    run_to_end(ctx, emu, run_id)
    return ctx, report_json(ctx, run_id)


def test_hit_copies_image_with_zero_cost(tmp_path: Path, emu: Emulator) -> None:
    """Same model, prompt, ratio and size in a later run: served from the cache, not sent."""
    ctx, first = _first_run(tmp_path, emu)
    sent_before = len([e for e in emu.request_log if e.get("kind") == "line"])
    spec = write_job(tmp_path / "two", "two", ROWS)
    run_id = submit(ctx, spec)
    run = run_to_end(ctx, emu, run_id)
    assert run.state == "finished"
    assert len([e for e in emu.request_log if e.get("kind") == "line"]) == sent_before
    report = report_json(ctx, run_id)
    earlier = _items(first)
    for key, row in _items(report).items():
        assert row["status"] == "succeeded" and row["cached"] is True
        assert row["cost_usd"] == 0 and row["attempts"] == 0 and row["input_tokens"] == 0
        assert row["uri"].startswith(str(tmp_path / "two" / "out"))
        assert Path(row["uri"]).read_bytes() == Path(earlier[key]["uri"]).read_bytes()
        assert row["sha256"] == earlier[key]["sha256"]
    summary = report["summary"]
    assert summary["cached"] == 2 and summary["cost_usd"] == 0
    assert summary["saved_by_cache_usd"] == pytest.approx(first["summary"]["cost_usd"])
    with ctx.ledger.engine.connect() as conn:
        events = conn.execute(
            select(repo.EVENTS.c.detail).where(
                repo.EVENTS.c.run_id == run_id, repo.EVENTS.c.to_state == "succeeded"
            )
        ).all()
        assert repo.batches_of_run(conn, run_id) == []
    assert len(events) == 2 and all("prompt cache" in (e.detail or "") for e in events)


@pytest.mark.parametrize(
    ("part", "change"),
    [
        ("model", {"model": FLASH}),
        ("prompt", {}),
        ("ratio", {"ratio": "16:9"}),
        ("size", {"size": "2K"}),
    ],
)
def test_miss_when_any_part_of_the_key_differs(
    tmp_path: Path, emu: Emulator, part: str, change: dict[str, str]
) -> None:
    """A different model, prompt, aspect ratio or image size is a miss: the item is sent."""
    ctx, _ = _first_run(tmp_path, emu)
    rows = [{"key": "a", "prompt": "a red apple, at dusk"}] if part == "prompt" else ROWS[:1]
    if part == "prompt":
        rows.append(ROWS[1])  # unchanged: still a hit
    spec = write_job(tmp_path / "two", "two", rows, **change)  # type: ignore[arg-type]
    run_id = submit(ctx, spec)
    run_to_end(ctx, emu, run_id)
    items = _items(report_json(ctx, run_id))
    assert items["a"]["status"] == "succeeded"
    assert items["a"]["cached"] is False and items["a"]["attempts"] == 1
    assert items["a"]["cost_usd"] > 0
    if part == "prompt":
        assert items["b"]["cached"] is True


def test_no_cache_sends_everything(tmp_path: Path, emu: Emulator) -> None:
    """A run submitted with --no-cache (use_cache false) sends every item."""
    ctx, _ = _first_run(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "two", "two", ROWS), use_cache=False)
    run_to_end(ctx, emu, run_id)
    report = report_json(ctx, run_id)
    assert report["summary"]["cached"] == 0 and report["summary"]["saved_by_cache_usd"] == 0
    assert all(not r["cached"] and r["attempts"] == 1 for r in report["items"])


def test_only_misses_are_packed_when_the_run_is_recorded(tmp_path: Path, emu: Emulator) -> None:
    """Recording a run packs items straight into batches, except those another run has an
    image for: they wait, queued, for the tick to serve them from the cache."""
    from sqlalchemy import text

    from pipeline.core.catalog import load_catalog
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec

    ctx, _ = _first_run(tmp_path, emu)
    rows = [*ROWS, {"key": "c", "prompt": "a blue plum"}]
    catalog = load_catalog()
    run_id, _ = create_run(
        ctx, load_spec(write_job(tmp_path / "two", "two", rows), catalog), catalog
    )
    with ctx.ledger.engine.connect() as conn:
        states = dict(
            conn.execute(
                text("SELECT key, state FROM items WHERE run_id = :r"), {"r": run_id}
            ).all()
        )
        (batch,) = repo.batches_of_run(conn, run_id)
        plan = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT prompt_sha256 FROM items WHERE state = 'succeeded' "
            "AND prompt_sha256 IN (?) AND run_id <> ? AND uri IS NOT NULL",
            ("x", run_id),
        ).all()
    assert states == {"a": "queued", "b": "queued", "c": "in_batch"}
    assert (batch.state, batch.item_count) == ("queued", 1)
    assert any("ix_items_cache" in str(row) for row in plan)  # the partial index is used
    run_to_end(ctx, emu, run_id)
    items = _items(report_json(ctx, run_id))
    assert [items[k]["cached"] for k in "abc"] == [True, True, False]


def test_missing_earlier_object_is_a_miss(tmp_path: Path, emu: Emulator) -> None:
    """When the earlier image is gone from storage, the item is sent as usual."""
    ctx, first = _first_run(tmp_path, emu)
    Path(_items(first)["a"]["uri"]).unlink()
    run_id = submit(ctx, write_job(tmp_path / "two", "two", ROWS))
    run_to_end(ctx, emu, run_id)
    items = _items(report_json(ctx, run_id))
    assert items["a"]["cached"] is False and items["a"]["attempts"] == 1
    assert Path(items["a"]["uri"]).exists()
    assert items["b"]["cached"] is True


def test_cli_no_cache_flag_and_status(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """`submit --no-cache` records use_cache false; `status --json` counts cached items."""
    import json

    from pipeline.cli import main

    ctx, _ = _first_run(tmp_path, emu)
    monkeypatch.setenv("NANOBATCH_DATABASE_URL", ctx.settings.database_url)
    monkeypatch.setenv("NANOBATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
    spec = write_job(tmp_path / "two", "two", ROWS)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["submit", str(spec), "--no-cache"])
    assert done.value.code == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    with ctx.ledger.engine.connect() as conn:
        assert repo.get_run(conn, run_id).use_cache is False
    spec3 = write_job(tmp_path / "three", "three", ROWS)
    with pytest.raises(SystemExit):
        main(["submit", str(spec3)])
    run3 = capsys.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["status", run3, "--json"])
    status = json.loads(capsys.readouterr().out)["runs"][0]
    assert status["cached"] == 2 and status["state"] == "finished"
    assert PRO in json.dumps(status)
