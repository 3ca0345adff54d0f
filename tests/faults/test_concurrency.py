"""Overlapping ticks: four `nanobatch tick` processes at once, on SQLite and PostgreSQL,
create each batch once and harvest each result once; a dead holder's lease lapses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faults_helpers import Drill, check_exactly_once

from pipeline.emulator import Emulator

HARMLESS = ("database is locked", "could not serialize", "deadlock")


@pytest.mark.slow
def test_four_ticks_at_once(tmp_path: Path, db_url: str) -> None:
    """Waves of 4 concurrent ticks finish the run with every create and result once."""
    with Emulator(image_scale=0.02, pending_seconds=0.2, running_seconds=0.3) as emu:
        drill = Drill(tmp_path, emu, db_url)
        drill.write_spec(8, per_batch=2)
        run = drill.submit()
        for _ in range(8):
            procs = [drill.popen("tick") for _ in range(4)]
            for proc in procs:
                _out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err[-3000:]
                assert "Traceback" not in err, err[-3000:]
            if drill.run_state(run) != "active":
                break
        check_exactly_once(drill, run, 8)
        assert len(emu.batches()) == 4


def test_dead_lease_delays_at_most_its_ttl(drill: Drill) -> None:
    """A lease left by a killed tick blocks until it expires (<= 60 s), then work goes on."""
    drill.write_spec(2, per_batch=2)
    drill.cli("submit", str(drill.spec))
    run = drill.query("SELECT id FROM runs")[0][0]
    now = datetime.now(UTC)
    drill.query("UPDATE batches SET lease_owner = 'dead', lease_until = :u", u=now + timedelta(60))
    for _ in range(2):
        assert drill.tick(600).code == 0
    assert drill.query("SELECT state FROM batches")[0][0] == "done"
    drill.query("UPDATE batches SET lease_until = :u", u=now - timedelta(seconds=1))
    drill.tick_until_done(run)
    check_exactly_once(drill, run, 2)
