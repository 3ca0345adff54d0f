"""Runs are isolated (CONTRACT section 6, issue 13 item 1): a run whose output storage fails
(a deleted bucket, a path in the way, a folder it may not write) is held with a reason code
and a backoff, every other run sharing the ledger goes on, `tick` exits 0, `cancel` ends a
held run, and a finished batch's results reach the spool before storing can block them."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faults_helpers import MODEL, Drill, sha256_file
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from prometheus_client.parser import text_string_to_metric_families

from pipeline.emulator import Emulator, FaultPlan

N = 2
SQL_BATCH_STATES = "SELECT state FROM batches WHERE run_id = :r ORDER BY seq"


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Any:
    """A Drill on SQLite and on PostgreSQL; batches finish when a tick pushes the emulator's
    clock on (not while the runs are being submitted)."""
    with Emulator(image_scale=0.02, pending_seconds=5, running_seconds=5) as emu:
        yield Drill(tmp_path, emu, db_url)


def write_job(drill: Drill, name: str, output: str, n: int = N) -> Path:
    """A spec `name.toml` over its own CSV `name.csv` of n prompts, one batch."""
    rows = ["sku,title"] + [f"{name}-{i},{name} thing {i}" for i in range(n)]
    (drill.tmp / f"{name}.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = drill.tmp / f"{name}.toml"
    spec.write_text(
        f'name = "{name}"\nmodel = "{MODEL}"\n'
        f'[input]\npath = "{name}.csv"\nid_column = "sku"\nprompt = "Photo of {{title}}"\n'
        '[image]\naspect_ratio = "1:1"\nsize = "1K"\n'
        f'[output]\nuri = "{output}"\n'
        f"[limits]\nmax_requests_per_batch = {n}\n",
        encoding="utf-8",
    )
    return spec


def submit(drill: Drill, spec: Path) -> str:
    res = drill.cli("submit", str(spec))
    assert res.code == 0, res.err
    return res.out.strip().splitlines()[-1]


def gcs() -> storage.Client:
    return storage.Client(project="nanobatch-test", credentials=AnonymousCredentials())


def delete_bucket(name: str) -> None:
    bucket = gcs().bucket(name)
    for blob in list(bucket.list_blobs()):
        blob.delete()
    bucket.delete()


def item_states(drill: Drill, run: str) -> dict[str, str]:
    rows = drill.query("SELECT key, state FROM items WHERE run_id = :r", r=run)
    return {r.key: r.state for r in rows}


def batch_states(drill: Drill, run: str) -> list[str]:
    return [r[0] for r in drill.query(SQL_BATCH_STATES, r=run)]


def make_due(drill: Drill, run: str) -> None:
    """Let the held run's backoff pass, as time would."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    drill.query("UPDATE runs SET hold_not_before = :p WHERE id = :r", p=past, r=run)


def spooled(drill: Drill) -> list[str]:
    spool = drill.tmp / "state" / "spool"
    return sorted(p.name for p in spool.glob("*.results.jsonl")) if spool.exists() else []


def downloads(drill: Drill) -> int:
    return sum(1 for e in drill.emu.request_log if e.get("kind") == "download")


def held_metric(drill: Drill, reason: str) -> float:
    res = drill.cli("metrics")
    assert res.code == 0, res.err
    for family in text_string_to_metric_families(res.out):
        for sample in family.samples:
            if sample.name == "nanobatch_runs_held" and sample.labels == {"reason": reason}:
                return float(sample.value)
    raise AssertionError(f"no nanobatch_runs_held{{reason={reason!r}}} in:\n{res.out}")


def tick_ok(drill: Drill, advance: float = 600.0) -> str:
    res = drill.tick(advance)
    assert res.code == 0, res.err[-3000:]
    assert "Traceback" not in res.err
    return res.err


def assert_finished(drill: Drill, run: str) -> None:
    assert drill.run_state(run) == "finished"
    assert set(item_states(drill, run).values()) == {"succeeded"}


# ── a deleted bucket ─────────────────────────────────────────────────────────


@pytest.mark.gcs
def test_deleted_bucket_holds_its_run_and_others_go_on(world: Drill, gcs_env: str) -> None:
    """Run A's bucket is deleted after submit: three ticks exit 0, run B finishes, A is held
    (status `waiting` names the bucket and the retry time; status --json and the metrics say
    held/storage) with its results in the spool; once the bucket is back and the backoff has
    passed, A is harvested from the spool (no second download) and the hold clears."""
    drill, bucket = world, gcs_env
    run_a = submit(drill, write_job(drill, "alpha", f"gs://{bucket}/x"))
    run_b = submit(drill, write_job(drill, "beta", "out-b"))
    delete_bucket(bucket)

    for _ in range(3):
        tick_ok(drill)
    assert_finished(drill, run_b)
    assert sorted(os.listdir(drill.tmp / "out-b")) == sorted(
        ["beta-0.png", "beta-1.png", "manifest.parquet", "rejects.csv"]
    )
    assert drill.run_state(run_a) == "active"
    assert set(item_states(drill, run_a).values()) == {"in_batch"}
    assert batch_states(drill, run_a) == ["done"]
    assert spooled(drill) == [f"nb-{run_a}-00001.results.jsonl"]

    status = drill.status(run_a)
    held = status["held"]
    assert held["reason"] == "storage"
    assert held["tries"] >= 1
    assert datetime.fromisoformat(held["retry_at"]) > datetime.fromisoformat(held["since"])
    assert f"gs://{bucket}" in held["detail"]
    assert status["waiting"].startswith("held (storage)")
    assert status["waiting_code"] == "held"
    assert f"gs://{bucket}" in status["waiting"] and "retry" in status["waiting"]
    text = drill.cli("status", run_a)
    waiting = [line for line in text.out.splitlines() if "waiting:" in line]
    assert len(waiting) == 1 and f"gs://{bucket}" in waiting[0], text.out
    assert drill.status(run_b)["held"] is None
    assert held_metric(drill, "storage") == 1

    gcs().create_bucket(bucket)
    before = downloads(drill)
    make_due(drill, run_a)
    tick_ok(drill)
    assert_finished(drill, run_a)
    assert downloads(drill) == before  # harvested from the spool
    assert spooled(drill) == []
    assert drill.status(run_a)["held"] is None
    assert held_metric(drill, "storage") == 0
    for key, row in drill.items().items():
        if key.startswith("alpha"):
            blob = gcs().bucket(bucket).get_blob(f"x/{key}.png")
            assert blob is not None and blob.metadata["nanobatch-sha256"] == row.sha256


@pytest.mark.gcs
def test_held_run_is_not_retried_before_its_backoff(world: Drill, gcs_env: str) -> None:
    """A held run is left alone until its not_before (no store attempt, tries unchanged);
    each retry that fails again pushes not_before further out."""
    drill, bucket = world, gcs_env
    run_a = submit(drill, write_job(drill, "alpha", f"gs://{bucket}/x"))
    delete_bucket(bucket)
    tick_ok(drill)
    tick_ok(drill)
    first = drill.status(run_a)["held"]
    assert first["tries"] == 1, first
    tick_ok(drill)
    assert drill.status(run_a)["held"] == first

    delays = []
    for _ in range(3):
        make_due(drill, run_a)
        tick_ok(drill)
        held = drill.status(run_a)["held"]
        retry_at = datetime.fromisoformat(held["retry_at"])
        delays.append((retry_at - datetime.now(UTC)).total_seconds())
    assert drill.status(run_a)["held"]["tries"] == 4
    assert delays[0] < delays[2], delays


@pytest.mark.gcs
def test_cancel_ends_a_held_run(world: Drill, gcs_env: str) -> None:
    """`cancel` on a held run: the run is cancelled, its items without a stored image are
    cancelled (their paid lines still counted), its spool file is removed, and later ticks
    neither fail nor try to store for it."""
    drill, bucket = world, gcs_env
    run_a = submit(drill, write_job(drill, "alpha", f"gs://{bucket}/x"))
    delete_bucket(bucket)
    tick_ok(drill)
    tick_ok(drill)
    assert drill.status(run_a)["held"]["reason"] == "storage"

    res = drill.cli("cancel", run_a)
    assert res.code == 0, res.err
    assert drill.run_state(run_a) == "cancelled"
    assert set(item_states(drill, run_a).values()) == {"cancelled"}
    assert batch_states(drill, run_a) == ["harvested"]
    costs = drill.query(
        "SELECT a.outcome, a.cost_nanos FROM attempts a JOIN items i ON i.id = a.item_id "
        "WHERE i.run_id = :r",
        r=run_a,
    )
    assert {c.outcome for c in costs} == {"cancelled"}
    assert all(c.cost_nanos > 0 for c in costs), costs  # the lines were paid for
    assert spooled(drill) == []
    status = drill.status(run_a)
    assert status["held"] is None and status["waiting"] is None
    assert status["items"]["pending"] == 0

    gcs().create_bucket(bucket)
    err = tick_ok(drill)
    assert "run_held" not in err
    assert list(gcs().bucket(bucket).list_blobs()) == []


# ── local folders ────────────────────────────────────────────────────────────


def test_dangling_symlink_holds_its_run_and_others_go_on(world: Drill) -> None:
    """A dangling symlink where one of run A's images must go holds A (the reason names
    the path); run B finishes; once the link is gone A finishes with every image once."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    run_b = submit(drill, write_job(drill, "beta", "out-b"))
    link = drill.tmp / "out-a" / "alpha-1.png"
    link.symlink_to(drill.tmp / "nowhere" / "gone.png")

    for _ in range(3):
        tick_ok(drill)
    assert_finished(drill, run_b)
    assert drill.run_state(run_a) == "active"
    held = drill.status(run_a)["held"]
    assert held["reason"] == "storage"
    assert str(link) in held["detail"]
    assert "dangling symbolic link" in held["detail"]
    assert spooled(drill) == [f"nb-{run_a}-00001.results.jsonl"]

    link.unlink()
    make_due(drill, run_a)
    tick_ok(drill)
    assert_finished(drill, run_a)
    for key, row in drill.items().items():
        if key.startswith("alpha"):
            assert sha256_file(drill.tmp / "out-a" / f"{key}.png") == row.sha256
    assert drill.status(run_a)["held"] is None


def test_output_folder_replaced_by_a_file_holds_its_run(world: Drill) -> None:
    """A path in the way of the whole output folder (a file where the folder was) holds the
    run with the reason; the other run finishes."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    run_b = submit(drill, write_job(drill, "beta", "out-b"))
    shutil.rmtree(drill.tmp / "out-a")
    (drill.tmp / "out-a").write_text("in the way\n", encoding="utf-8")

    for _ in range(3):
        tick_ok(drill)
    assert_finished(drill, run_b)
    held = drill.status(run_a)["held"]
    assert held["reason"] == "storage"
    assert str(drill.tmp / "out-a") in held["detail"]

    (drill.tmp / "out-a").unlink()
    make_due(drill, run_a)
    tick_ok(drill)
    assert_finished(drill, run_a)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_unwritable_folder_holds_its_run(world: Drill) -> None:
    """A folder run A may not write (chmod 0555) holds A; B finishes; chmod back, A finishes."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    run_b = submit(drill, write_job(drill, "beta", "out-b"))
    folder = drill.tmp / "out-a"
    folder.chmod(0o555)
    try:
        for _ in range(3):
            tick_ok(drill)
        assert_finished(drill, run_b)
        assert drill.status(run_a)["held"]["reason"] == "storage"
    finally:
        folder.chmod(0o755)
    make_due(drill, run_a)
    tick_ok(drill)
    assert_finished(drill, run_a)


def test_held_run_still_spools_new_results(tmp_path: Path, sqlite_url: str) -> None:
    """While run A is held and waiting for its backoff, another of its batches finishes:
    the tick downloads that results file to the spool (paid results never wait to expire)
    but stores nothing; the retry harvests both from the spool, downloading nothing again."""
    with Emulator(image_scale=0.02, pending_seconds=50, running_seconds=50) as emu:
        drill = Drill(tmp_path, emu, sqlite_url)
        spec = write_job(drill, "alpha", "out-a", n=4)
        spec.write_text(
            spec.read_text().replace("max_requests_per_batch = 4", "max_requests_per_batch = 2")
        )
        res = drill.cli("submit", str(spec), NANOBATCH_MAX_LIVE_BATCHES="1")
        assert res.code == 0, res.err
        run_a = res.out.strip().splitlines()[-1]
        link = drill.tmp / "out-a" / "alpha-0.png"
        link.symlink_to(drill.tmp / "nowhere.png")
        emu.clock.advance(60)  # the second batch is created 60 s after the first
        assert drill.cli("tick").code == 0
        assert batch_states(drill, run_a) == ["running", "running"]
        tick_ok(drill, 50)  # the first is done, the second still running
        assert drill.status(run_a)["held"]["reason"] == "storage"
        assert batch_states(drill, run_a) == ["done", "running"]
        assert spooled(drill) == [f"nb-{run_a}-00001.results.jsonl"]

        tick_ok(drill, 600)
        assert batch_states(drill, run_a) == ["done", "done"]
        assert spooled(drill) == [
            f"nb-{run_a}-00001.results.jsonl",
            f"nb-{run_a}-00002.results.jsonl",
        ]
        assert set(item_states(drill, run_a).values()) == {"in_batch"}
        assert not (drill.tmp / "out-a" / "alpha-2.png").exists()

        link.unlink()
        make_due(drill, run_a)
        before = downloads(drill)
        tick_ok(drill)
        assert_finished(drill, run_a)
        assert downloads(drill) == before


def test_status_text_names_the_hold(world: Drill) -> None:
    """`status` (text) prints one `waiting:` line with the reason code, the problem and when
    it is retried; `status --json` is valid JSON with `held`."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    (drill.tmp / "out-a" / "alpha-0.png").symlink_to(drill.tmp / "nowhere.png")
    tick_ok(drill)
    tick_ok(drill)
    res = drill.cli("status")
    assert res.out.startswith(run_a), res.out
    assert res.code == 0, res.err
    lines = [line for line in res.out.splitlines() if "waiting:" in line]
    assert len(lines) == 1, res.out
    assert "held (storage)" in lines[0] and "retry" in lines[0] and "UTC" in lines[0]
    entry = json.loads(drill.cli("status", "--json").out)["runs"][0]
    assert entry["held"]["reason"] == "storage"


# ── batch files, the service, `run` ──────────────────────────────────────────


def test_results_file_refused_holds_its_run_as_batches(world: Drill) -> None:
    """The service refuses run A's results file for good (404): A is held with reason
    `batches`; run B's results, downloaded after it, are harvested; once the file answers
    again and the backoff has passed, A finishes."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    run_b = submit(drill, write_job(drill, "beta", "out-b"))
    drill.emu.faults = FaultPlan.from_dict({"download_errors": [{"status": 404, "times": 1}]})
    tick_ok(drill)
    assert_finished(drill, run_b)
    held = drill.status(run_a)["held"]
    assert held["reason"] == "batches" and "404" in held["detail"], held
    assert held_metric(drill, "batches") == 1

    make_due(drill, run_a)
    tick_ok(drill)
    assert_finished(drill, run_a)


def test_a_throttled_download_fails_the_tick_after_every_run_had_its_turn(world: Drill) -> None:
    """A download that breaks off (the service, not the run) is no hold: the tick still
    harvests run B, then exits 1; the next tick harvests A from a fresh download."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    run_b = submit(drill, write_job(drill, "beta", "out-b"))
    drill.emu.faults = FaultPlan.from_dict({"download": {"drop_after_bytes": 500}})
    res = drill.tick(600)
    assert res.code == 1, res.err
    assert "broke off" in res.err
    assert_finished(drill, run_b)
    assert drill.status(run_a)["held"] is None
    assert batch_states(drill, run_a) == ["done"]
    tick_ok(drill)
    assert_finished(drill, run_a)


def test_run_stops_when_its_run_is_held(world: Drill) -> None:
    """`nanobatch run` whose run is held exits 1 naming the reason, when it is retried and how
    to end it; the run stays active and a later tick finishes it."""
    drill = world
    spec = write_job(drill, "alpha", "out-a")
    # Submitted first: a link there before submit would make the name taken, and the item
    # would fail before anything is sent (CONTRACT section 6), not at harvest.
    assert drill.cli("submit", str(spec)).code == 0
    (drill.tmp / "out-a").mkdir(exist_ok=True)
    link = drill.tmp / "out-a" / "alpha-0.png"
    link.symlink_to(drill.tmp / "nowhere.png")
    drill.emu.clock.advance(600)  # the batch is done by the run's first poll...
    res = drill.cli("run", str(spec), "--poll-interval", "0")  # ...of the run it resumes
    assert res.code == 1, res.err
    message = res.err.strip().splitlines()[-1]
    assert message.startswith("error: run alpha-") and "is held (storage)" in message
    assert "dangling symbolic link" in message and "nanobatch cancel alpha-" in message
    run_a = drill.query("SELECT id FROM runs")[0][0]
    assert drill.run_state(run_a) == "active"
    link.unlink()
    make_due(drill, run_a)
    tick_ok(drill)
    assert_finished(drill, run_a)


def test_metrics_name_each_held_run(world: Drill) -> None:
    """`nanobatch_run_held_seconds` has one series per held run (run, job, reason)."""
    drill = world
    run_a = submit(drill, write_job(drill, "alpha", "out-a"))
    submit(drill, write_job(drill, "beta", "out-b"))
    (drill.tmp / "out-a" / "alpha-0.png").symlink_to(drill.tmp / "nowhere.png")
    tick_ok(drill)
    families = {f.name: f for f in text_string_to_metric_families(drill.cli("metrics").out)}
    samples = families["nanobatch_run_held_seconds"].samples
    assert [s.labels for s in samples] == [{"run": run_a, "job": "alpha", "reason": "storage"}]
    assert samples[0].value >= 0


def test_held_run_sends_nothing_new(world: Drill) -> None:
    """A held run's queued batch is not created (nothing more is spent on a run whose
    results cannot be stored); once the hold clears it is."""
    drill = world
    spec = write_job(drill, "alpha", "out-a", n=4)
    spec.write_text(
        spec.read_text().replace("max_requests_per_batch = 4", "max_requests_per_batch = 2")
    )
    res = drill.cli("submit", str(spec), NANOBATCH_MAX_LIVE_BATCHES="1")
    assert res.code == 0, res.err
    run_a = res.out.strip().splitlines()[-1]
    link = drill.tmp / "out-a" / "alpha-0.png"
    link.symlink_to(drill.tmp / "nowhere.png")
    assert batch_states(drill, run_a) == ["running", "queued"]
    for _ in range(2):
        tick_ok(drill)
    assert drill.status(run_a)["held"]["reason"] == "storage"
    assert batch_states(drill, run_a) == ["done", "queued"]
    assert len(drill.creates()) == 1

    link.unlink()
    make_due(drill, run_a)
    tick_ok(drill)
    assert batch_states(drill, run_a) == ["harvested", "running"]
    assert len(drill.creates()) == 2
    tick_ok(drill)
    assert_finished(drill, run_a)
