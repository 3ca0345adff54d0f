"""The ledger's writes cost no more per row than they must: on SQLite, no statement that
writes rows builds a temporary B-tree for each execution (which an IN list of more than two
constants in a CHECK constraint did, for every item row: migration 0004)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from pipeline.emulator import Emulator
from tests.features.helpers import make_context, run_to_end, submit, write_job

ROWS = [{"key": f"k{i}", "prompt": f"a kite, sketch {i}"} for i in range(5)]


def test_row_writes_of_a_whole_run_build_no_temporary_btree(tmp_path: Path, emu: Emulator) -> None:
    ctx = make_context(tmp_path, emu)
    writes: dict[str, Any] = {}

    @event.listens_for(ctx.ledger.engine, "before_cursor_execute")
    def _collect(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        verb = sql.lstrip().split(None, 1)[0].upper()
        # An IN list or RETURNING of the statement's own builds its B-tree once, not per row.
        if verb in ("INSERT", "UPDATE") and " IN (" not in sql and "RETURNING" not in sql:
            writes.setdefault(sql, params[0] if many else params)

    run_to_end(ctx, emu, submit(ctx, write_job(tmp_path / "job", "job", ROWS, per_batch=2)))
    event.remove(ctx.ledger.engine, "before_cursor_execute", _collect)

    tables = {sql.split()[2] for sql in writes if sql.upper().startswith("INSERT")}
    assert {"runs", "items", "attempts", "events"} <= tables
    # Harvest inserts each attempt once, with its outcome: no attempt row is ever updated.
    assert not any(sql.startswith("UPDATE attempts") for sql in writes)
    with ctx.ledger.engine.connect() as conn:
        for sql, params in writes.items():
            ops = {row[1] for row in conn.exec_driver_sql(f"EXPLAIN {sql}", params)}
            assert "OpenEphemeral" not in ops, sql
