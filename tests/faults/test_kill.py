"""Kill drills: `nanobatch run` SIGKILLed at each crash point, then plain ticks finish the
run with every image stored once, every batch created once and every cost counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from faults_helpers import Drill, check_exactly_once

N, PER_BATCH = 6, 2
LEASE_TTL_S = 60

# (crash point, phase): at least one per phase of a run.
POINTS = [
    ("submit.uploaded", "upload"),
    ("submit.uploaded:2", "upload"),
    ("submit.intent", "create"),
    ("submit.created", "create"),
    ("submit.created:3", "create"),
    ("poll.finished", "poll"),
    ("harvest.downloaded", "download"),
    ("harvest.stored", "store"),
    ("harvest.stored:2", "store"),
    ("harvest.committed", "record"),
    ("harvest.committed:2", "record"),
    ("harvest.finish", "finish"),
    ("harvest.harvested", "finish"),
    ("report.manifest:2", "report"),
    ("report.row:3", "report"),
]


def expire_leases(drill: Drill) -> None:
    """Check no lease outlives 60 s, then let the dead holder's leases lapse (as time would)."""
    now = datetime.now(UTC)
    latest = now + timedelta(seconds=LEASE_TTL_S + 5)
    rows = drill.query("SELECT lease_until FROM batches WHERE lease_until IS NOT NULL")
    rows += drill.query("SELECT expires_at FROM leases")
    for (until,) in rows:
        until = until if isinstance(until, datetime) else datetime.fromisoformat(str(until))
        assert until.replace(tzinfo=until.tzinfo or UTC) <= latest, "a lease outlives 60 s"
    past = now - timedelta(days=1)
    drill.query("UPDATE batches SET lease_until = :p WHERE lease_until IS NOT NULL", p=past)
    drill.query("UPDATE leases SET expires_at = :p", p=past)


# One crash point per phase of a run, on PostgreSQL: its transactions, COPY and ON CONFLICT
# paths are not SQLite's.
PG_POINTS = [
    ("submit.uploaded", "upload"),
    ("submit.intent", "create"),
    ("submit.created", "create"),
    ("poll.finished", "poll"),
    ("harvest.stored", "store"),
    ("harvest.committed", "record"),
    ("harvest.harvested", "finish"),
    ("report.manifest:2", "report"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("point", "phase"), POINTS, ids=[p for p, _ in POINTS])
def test_kill_then_tick_is_exactly_once(drill: Drill, point: str, phase: str) -> None:
    """A run killed at a crash point finishes on later ticks with nothing lost or doubled."""
    kill_then_finish(drill, point, phase)


@pytest.mark.slow
@pytest.mark.parametrize(("point", "phase"), PG_POINTS, ids=[p for p, _ in PG_POINTS])
def test_kill_then_tick_is_exactly_once_on_postgres(
    pg_drill: Drill, point: str, phase: str
) -> None:
    """The same drill with the ledger on PostgreSQL."""
    kill_then_finish(pg_drill, point, phase)


def kill_then_finish(drill: Drill, point: str, phase: str) -> None:
    """`run` SIGKILLed at `point`, then plain ticks: every image stored once, every batch
    created once, every cost counted once."""
    drill.write_spec(N, per_batch=PER_BATCH)
    died = drill.sub(
        "run",
        str(drill.spec),
        "--poll-interval",
        "0.1",
        NANOBATCH_CRASH_AT=point,
        # Four harvest workers: a kill can land mid-write of another image; the replay's
        # writer of that object sweeps the dead process's temporary file.
        NANOBATCH_HARVEST_WORKERS="4",
        timeout=90,
    )
    assert died.code == -9, f"{phase}: expected SIGKILL, got {died.code}\n{died.err[-3000:]}"
    run = drill.query("SELECT id FROM runs")[0][0]
    expire_leases(drill)
    drill.tick_until_done(run, advance=0.0 if phase == "report" else 600.0)
    check_exactly_once(drill, run, N)
    assert len(drill.emu.batches()) == N // PER_BATCH


@pytest.mark.slow
def test_kill_while_recording_then_submit_again_is_exactly_once(drill: Drill) -> None:
    """Killed while recording the run, after a batch's request file was written: nothing is
    recorded, and submitting again records the run once, rewrites its files and finishes."""
    kill_while_recording(drill)


@pytest.mark.slow
def test_kill_while_recording_on_postgres(pg_drill: Drill) -> None:
    """The same with the ledger on PostgreSQL, where items go in through COPY."""
    kill_while_recording(pg_drill)


def kill_while_recording(drill: Drill) -> None:
    drill.write_spec(N, per_batch=PER_BATCH)
    died = drill.sub("run", str(drill.spec), NANOBATCH_CRASH_AT="record.batch_closed:2")
    assert died.code == -9, f"expected SIGKILL, got {died.code}\n{died.err[-3000:]}"
    assert drill.query("SELECT count(*) FROM runs") == [(0,)]
    assert list((drill.tmp / "state" / "spool").glob("*.input.jsonl"))  # left by the dead run
    run = drill.submit()
    drill.tick_until_done(run)
    check_exactly_once(drill, run, N)
    assert len(drill.emu.batches()) == N // PER_BATCH
