"""Batch request files written while a run is recorded (`shardfile`): uploaded as they are
when their bytes match the ledger's sha256, built from the ledger otherwise, removed when
the run is not recorded, and swept from the spool once nothing will read them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters import shardfile
from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.ledger import Ledger, Recording
from pipeline.core.catalog import load_catalog
from pipeline.core.errors import SpecError
from pipeline.emulator import Emulator
from pipeline.shell import intake
from pipeline.shell.submit import Submitter
from pipeline.shell.tick import tick
from tests.features.helpers import make_context, submit, write_job

ROWS = [{"key": f"k{i}", "prompt": f"a harbour at dawn, étude {i}"} for i in range(7)]


def _batches(ctx: Any, run_id: str) -> list[repo.BatchRow]:
    with ctx.ledger.engine.connect() as conn:
        return repo.batches_of_run(conn, run_id)


def _uploaded(emu: Emulator, batch: repo.BatchRow) -> bytes:
    assert batch.file_name is not None
    return emu._state.live_file(batch.file_name.removeprefix("files/")).path.read_bytes()


def test_recording_writes_the_files_the_ledger_would_build(tmp_path: Path, emu: Emulator) -> None:
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=3))
    batches = _batches(ctx, run_id)
    assert [b.item_count for b in batches] == [3, 3, 1]
    for batch in batches:
        path = shardfile.path_for(ctx.settings.spool_dir, batch.display_name)
        written = path.read_bytes()
        assert shardfile.sha256_of(path) == batch.shard_sha256
        path.unlink()
        assert Submitter(ctx)._build_file(batch, ctx.settings.spool_dir).read_bytes() == written


def test_upload_sends_the_written_file_without_reading_rows_back(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=3))
    expected = {
        b.display_name: shardfile.path_for(ctx.settings.spool_dir, b.display_name).read_bytes()
        for b in _batches(ctx, run_id)
    }

    def no_rows(*_: Any) -> Any:
        raise AssertionError("the rows were read back")

    monkeypatch.setattr(Ledger, "batch_request_rows", no_rows)
    tick(ctx, load_catalog())
    batches = _batches(ctx, run_id)
    assert all(b.state == "running" for b in batches)
    assert {b.display_name: _uploaded(emu, b) for b in batches} == expected
    assert not list(ctx.settings.spool_dir.glob(f"*{shardfile.SUFFIX}"))  # removed once sent


def test_a_changed_or_missing_file_is_built_from_the_ledger(tmp_path: Path, emu: Emulator) -> None:
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=3))
    first, second, _ = _batches(ctx, run_id)
    spool = ctx.settings.spool_dir
    expected = {
        b.display_name: shardfile.path_for(spool, b.display_name).read_bytes()
        for b in (first, second)
    }
    tampered = shardfile.path_for(spool, first.display_name)
    tampered.write_bytes(tampered.read_bytes().replace(b"k0", b"k9"))
    shardfile.path_for(spool, second.display_name).unlink()
    tick(ctx, load_catalog())
    first, second, _ = _batches(ctx, run_id)
    assert _uploaded(emu, first) == expected[first.display_name]
    assert _uploaded(emu, second) == expected[second.display_name]


def test_only_the_first_batches_get_files(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "WRITTEN_BATCHES", 2)
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=2))
    batches = _batches(ctx, run_id)
    assert [b.shard_sha256 is not None for b in batches] == [True, True, False, False]
    files = sorted(p.name for p in ctx.settings.spool_dir.glob(f"*{shardfile.SUFFIX}"))
    assert files == [shardfile.path_for(Path(), b.display_name).name for b in batches[:2]]
    tick(ctx, load_catalog())
    assert [b.state for b in _batches(ctx, run_id)] == ["running"] * 4


def test_a_run_that_fails_to_record_leaves_no_files(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context(tmp_path, emu)
    close = Recording.close_batch
    calls = []

    def fail_on_third(*args: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise SpecError("stop here")
        close(*args, **kw)

    monkeypatch.setattr(Recording, "close_batch", fail_on_third)
    with pytest.raises(SpecError):
        submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=3))
    assert not [p for p in ctx.settings.spool_dir.glob("*") if p.is_file()]


def test_sweep_removes_sent_and_orphaned_files_and_keeps_waiting_ones(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context(tmp_path, emu, max_live_batches=1)
    run_id = submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=3))
    spool = ctx.settings.spool_dir
    fresh = shardfile.path_for(spool, "nb-unrecorded-00001")
    old = shardfile.path_for(spool, "nb-unrecorded-00002")
    for orphan in (fresh, old):
        orphan.write_bytes(b"{}\n")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    tick(ctx, load_catalog())  # submits one batch (the live-batch cap), sweeps at the start
    tick(ctx, load_catalog())
    sent, *waiting = _batches(ctx, run_id)
    assert sent.state == "running" and all(b.state == "queued" for b in waiting)
    assert not shardfile.path_for(spool, sent.display_name).exists()
    assert all(shardfile.path_for(spool, b.display_name).exists() for b in waiting)
    assert fresh.exists() and not old.exists()


def test_a_spool_that_cannot_be_written_only_costs_the_files(tmp_path: Path, emu: Emulator) -> None:
    """Recording goes on without the files; the upload builds them from the ledger."""
    ctx = make_context(tmp_path, emu)
    spool = ctx.settings.spool_dir
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_text("not a folder")
    run_id = submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=3))
    assert [b.shard_sha256 for b in _batches(ctx, run_id)] == [None, None, None]
    spool.unlink()
    tick(ctx, load_catalog())
    assert [b.state for b in _batches(ctx, run_id)] == ["running"] * 3
