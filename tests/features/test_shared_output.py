"""Runs that share an output location never destroy each other's files (issue 13 item 2,
CONTRACT section 6): every run's manifest rows and rejects survive another run's harvest,
and an item whose image name is already taken there (another run's image, a file nanobatch
did not write, or a name another run at the location is still making) fails for good before
any request is sent for it, naming the object. Checked on a local folder and on gs://
(fake-gcs-server), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.adapters.ledger import repo
from pipeline.adapters.writers import MANIFEST_SCHEMA
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator, FaultPlan
from pipeline.shell.commands import retry_run
from pipeline.shell.context import Context
from pipeline.shell.reporting import run_status
from pipeline.shell.tick import tick
from tests.features.helpers import make_context, report_json, run_to_end, submit, write_job

MANIFEST_COLUMNS = MANIFEST_SCHEMA.names

ALICE = [
    {"key": "k1", "prompt": "alice: a red kite"},
    {"key": "a2", "prompt": "alice: a blue boat"},
    {"key": "a3", "prompt": ""},  # rejected: empty prompt (row 3)
]
BOB = [
    {"key": "k1", "prompt": "bob: a green lamp"},
    {"key": "b2", "prompt": "bob: a yellow chair"},
    {"key": "b3", "prompt": ""},  # rejected: empty prompt (row 3)
]


@dataclass
class Location:
    """An output location the test can look into: a local folder or a gs:// prefix."""

    uri: str
    folder: Path | None = None
    bucket: Any = None
    prefix: str = ""

    def names(self) -> set[str]:
        if self.folder is not None:
            return {p.name for p in self.folder.iterdir()} if self.folder.exists() else set()
        blobs = self.bucket.client.list_blobs(self.bucket, prefix=f"{self.prefix}/")
        return {b.name.removeprefix(f"{self.prefix}/") for b in blobs}

    def read(self, name: str) -> bytes:
        if self.folder is not None:
            return (self.folder / name).read_bytes()
        return bytes(self.bucket.blob(f"{self.prefix}/{name}").download_as_bytes())

    def put(self, name: str, data: bytes) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / name).write_bytes(data)
        else:
            self.bucket.blob(f"{self.prefix}/{name}").upload_from_string(data)

    def remove(self, name: str) -> None:
        if self.folder is not None:
            (self.folder / name).unlink()
        else:
            self.bucket.blob(f"{self.prefix}/{name}").delete()

    def object_uri(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def manifest(self, name: str = "manifest.parquet") -> list[dict[str, Any]]:
        return list(pq.read_table(io.BytesIO(self.read(name))).to_pylist())

    def manifest_columns(self, name: str = "manifest.parquet") -> list[str]:
        return list(pq.read_table(io.BytesIO(self.read(name))).column_names)

    def csv_rows(self, name: str) -> list[list[str]]:
        return list(csv.reader(io.StringIO(self.read(name).decode("utf-8"))))


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.gcs)])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Location]:
    """The shared output location: a local folder, or a prefix in a fresh fake-gcs bucket."""
    if request.param == "local":
        folder = tmp_path / "out" / "shared"
        yield Location(str(folder), folder=folder)
        return
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket_name = request.getfixturevalue("gcs_env")
    client = storage.Client(project="nanobatch-test", credentials=AnonymousCredentials())
    yield Location(f"gs://{bucket_name}/shared", bucket=client.bucket(bucket_name), prefix="shared")


def _ctx(tmp_path: Path, emu: Emulator, db_url: str) -> Context:
    return make_context(tmp_path, emu, database_url=db_url)


def _lines_for(emu: Emulator, key: str) -> int:
    """Request lines the emulator received for `key` (from any run)."""
    return len([e for e in emu.request_log if e.get("kind") == "line" and e.get("key") == key])


def _items(ctx: Context, run_id: str) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in report_json(ctx, run_id)["items"]}


def _two_runs_one_after_the_other(
    tmp_path: Path, emu: Emulator, db_url: str, location: Location
) -> tuple[Context, str, str]:
    ctx = _ctx(tmp_path, emu, db_url)
    alice = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=location.uri))
    run_to_end(ctx, emu, alice)
    bob = submit(ctx, write_job(tmp_path / "bob", "bob", BOB, out=location.uri))
    run_to_end(ctx, emu, bob)
    return ctx, alice, bob


def test_shared_location_keeps_every_runs_manifest_and_rejects(
    tmp_path: Path, emu: Emulator, db_url: str, location: Location
) -> None:
    """Alice, then Bob, both to one location: manifest.parquet and rejects.csv hold both
    runs' rows (with a `run` column), and each run's own rows are in manifest-<run>.parquet
    and rejects-<run>.csv with today's columns."""
    ctx, alice, bob = _two_runs_one_after_the_other(tmp_path, emu, db_url, location)
    names = location.names()
    for run in (alice, bob):
        assert f"manifest-{run}.parquet" in names and f"rejects-{run}.csv" in names, names

    merged = location.manifest()
    assert location.manifest_columns() == [*MANIFEST_COLUMNS, "run"]
    assert sorted((r["run"], r["key"], r["status"]) for r in merged) == sorted(
        [
            (alice, "k1", "succeeded"),
            (alice, "a2", "succeeded"),
            (bob, "k1", "failed"),
            (bob, "b2", "succeeded"),
        ]
    )
    for run, keys in ((alice, {"k1", "a2"}), (bob, {"k1", "b2"})):
        own = location.manifest(f"manifest-{run}.parquet")
        assert location.manifest_columns(f"manifest-{run}.parquet") == MANIFEST_COLUMNS
        assert {r["key"] for r in own} == keys
        assert location.csv_rows(f"rejects-{run}.csv") == [
            ["row", "key", "reason"],
            ["3", "a3" if run == alice else "b3", "empty prompt"],
        ]
    rejects = location.csv_rows("rejects.csv")
    assert rejects[0] == ["row", "key", "reason", "run"]
    assert sorted(rejects[1:]) == sorted(
        [["3", "a3", "empty prompt", alice], ["3", "b3", "empty prompt", bob]]
    )
    # Alice's image is still hers: Bob's k1 never wrote over it.
    alice_k1 = _items(ctx, alice)["k1"]
    assert location.read("k1.png") and alice_k1["status"] == "succeeded"
    from pipeline.adapters.storage import sha256_hex

    assert sha256_hex(location.read("k1.png")) == alice_k1["sha256"]


def test_shared_taken_name_fails_before_any_request(
    tmp_path: Path, emu: Emulator, db_url: str, location: Location
) -> None:
    """Bob's k1 would land on Alice's k1.png: it fails for good at submit, naming the object,
    is never sent nor charged, and status and report count it as failed."""
    ctx, _alice, bob = _two_runs_one_after_the_other(tmp_path, emu, db_url, location)
    assert _lines_for(emu, "k1") == 1  # Alice's only
    k1 = _items(ctx, bob)["k1"]
    assert (k1["status"], k1["attempts"], k1["cost_usd"], k1["uri"]) == ("failed", 0, 0.0, None)
    assert location.object_uri("k1.png") in k1["error"]
    assert "nothing was sent" in k1["error"] and "overwrite" in k1["error"]
    assert f"nanobatch retry {bob} --include-final" in k1["error"]
    report = report_json(ctx, bob)
    assert report["summary"]["failed"] == 1 and report["summary"]["succeeded"] == 1
    with ctx.ledger.engine.connect() as conn:
        status = run_status(ctx, repo.get_run(conn, bob))
        (item,) = [i for i in repo.failed_items(conn, bob)]
    assert status["items"]["failed"] == 1 and status["items"]["failed_final"] == 1
    assert status["state"] == "finished"
    assert item.final


def test_shared_pending_name_of_another_run_fails_before_any_request(
    tmp_path: Path, emu: Emulator, db_url: str, location: Location
) -> None:
    """Alice and Bob submitted before any tick: Alice's k1 is not stored yet, but she is
    making it, so Bob's k1 fails at submit (naming Alice's run); only one k1 is ever sent."""
    ctx = _ctx(tmp_path, emu, db_url)
    alice = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=location.uri))
    bob = submit(ctx, write_job(tmp_path / "bob", "bob", BOB, out=location.uri))
    with ctx.ledger.engine.connect() as conn:
        failed = {r.key: (bool(r.final), r.error) for r in repo.failed_items(conn, bob)}
    assert list(failed) == ["k1"]
    final, error = failed["k1"]
    assert final and alice in error and location.object_uri("k1.") in error
    run_to_end(ctx, emu, alice)
    run_to_end(ctx, emu, bob)
    assert _lines_for(emu, "k1") == 1
    assert _items(ctx, alice)["k1"]["status"] == "succeeded"
    assert _items(ctx, bob)["b2"]["status"] == "succeeded"
    assert {r["run"] for r in location.manifest()} == {alice, bob}


def test_foreign_file_at_item_name_fails_before_any_request(
    tmp_path: Path, emu: Emulator, location: Location
) -> None:
    """A file nanobatch did not write under an item's name (any image extension) fails that
    item at submit; files that are not images of an item's name are no obstacle. A location
    with one run keeps the plain manifest.parquet and rejects.csv."""
    location.put("k1.jpg", b"the user's own photo")
    location.put("a2.json", b"{}")
    location.put("notes.txt", b"hello")
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=location.uri))
    run_to_end(ctx, emu, run_id)
    items = _items(ctx, run_id)
    assert items["k1"]["status"] == "failed" and items["k1"]["attempts"] == 0
    assert location.object_uri("k1.jpg") in items["k1"]["error"]
    assert items["a2"]["status"] == "succeeded"
    assert _lines_for(emu, "k1") == 0
    assert location.read("k1.jpg") == b"the user's own photo"
    names = location.names()
    assert {"manifest.parquet", "rejects.csv"} <= names
    assert not [n for n in names if n.startswith(("manifest-", "rejects-"))]
    assert location.manifest_columns() == MANIFEST_COLUMNS
    assert {(r["key"], r["status"]) for r in location.manifest()} == {
        ("k1", "failed"),
        ("a2", "succeeded"),
    }
    assert location.csv_rows("rejects.csv") == [
        ["row", "key", "reason"],
        ["3", "a3", "empty prompt"],
    ]


def test_retry_after_moving_the_object_away_sends_the_item(
    tmp_path: Path, emu: Emulator, location: Location
) -> None:
    """The failure says what to do: move the object away, `retry --include-final`, and the
    next tick sends the item (checked again when it is queued)."""
    location.put("k1.png", b"in the way")
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=location.uri))
    run_to_end(ctx, emu, run_id)
    assert _items(ctx, run_id)["k1"]["status"] == "failed"
    location.remove("k1.png")
    assert retry_run(ctx, run_id, include_final=True) == 1
    run_to_end(ctx, emu, run_id)
    k1 = _items(ctx, run_id)["k1"]
    assert (k1["status"], k1["attempts"]) == ("succeeded", 1)
    assert _lines_for(emu, "k1") == 1


def test_item_queued_later_is_checked_before_it_is_sent(
    tmp_path: Path, emu: Emulator, location: Location
) -> None:
    """An item queued again (here by `retry --include-final`) whose name was taken meanwhile
    fails for good when batches are formed, before a second request is sent."""
    emu.faults = FaultPlan.from_dict(
        {"line_faults": [{"kind": "error", "code": 3, "keys": ["k1"]}]}
    )
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=location.uri))
    run_to_end(ctx, emu, run_id)
    assert _items(ctx, run_id)["k1"]["attempts"] == 1
    location.put("k1.webp", b"someone else's")
    assert retry_run(ctx, run_id, include_final=True) == 1
    run_to_end(ctx, emu, run_id)
    k1 = _items(ctx, run_id)["k1"]
    assert (k1["status"], k1["attempts"]) == ("failed", 1)
    assert location.object_uri("k1.webp") in k1["error"]
    assert _lines_for(emu, "k1") == 1


def test_cache_miss_on_a_taken_name_is_not_sent(
    tmp_path: Path, emu: Emulator, location: Location
) -> None:
    """An item the prompt cache could serve stays queued at submit; when its copy cannot go
    in (a different file holds its name), the cache misses and the item fails before it is
    sent, instead of being paid for and refused at harvest."""
    ctx = make_context(tmp_path, emu)
    earlier = submit(ctx, write_job(tmp_path / "earlier", "earlier", ALICE[:1]))
    run_to_end(ctx, emu, earlier)
    location.put("k1.png", b"not the cached image")
    run_id = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=location.uri))
    run_to_end(ctx, emu, run_id)
    k1 = _items(ctx, run_id)["k1"]
    assert (k1["status"], k1["attempts"], k1["cached"]) == ("failed", 0, False)
    assert location.object_uri("k1.png") in k1["error"]
    assert _lines_for(emu, "k1") == 1  # the earlier run's only


def test_overwrite_true_sends_and_replaces_a_taken_name(
    tmp_path: Path, emu: Emulator, location: Location
) -> None:
    """With [output] overwrite = true nothing is checked: the item is sent and replaces the
    object at its name."""
    location.put("k1.png", b"old bytes")
    ctx = make_context(tmp_path, emu)
    spec = write_job(tmp_path / "alice", "alice", ALICE, out=location.uri)
    spec.write_text(
        spec.read_text().replace("[limits]", "overwrite = true\n\n[limits]"), encoding="utf-8"
    )
    run_id = submit(ctx, spec)
    run_to_end(ctx, emu, run_id)
    assert _items(ctx, run_id)["k1"]["status"] == "succeeded"
    assert location.read("k1.png") != b"old bytes"


def test_gcs_check_is_one_listing_of_the_prefix(
    tmp_path: Path, emu: Emulator, gcs_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On gs:// the names are learnt from one paged listing of the prefix: its requests grow
    with the objects there (a page at a time), never with the items; no object lookups."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="nanobatch-test", credentials=AnonymousCredentials())
    bucket = client.bucket(gcs_env)
    for i in range(25):
        bucket.blob(f"shared/other-{i}.png").upload_from_string(b"x")
    bucket.blob("shared/k3.png").upload_from_string(b"taken")
    bucket.blob("shared/deeper/k4.png").upload_from_string(b"in a sub-folder: no obstacle")
    rows = [{"key": f"k{i}", "prompt": f"thing {i}"} for i in range(6)]
    spec = write_job(tmp_path / "job", "job", rows, out=f"gs://{gcs_env}/shared")

    from pipeline.adapters.storage import gcs

    monkeypatch.setattr(gcs, "LIST_PAGE_SIZE", 10)
    listings: list[str] = []
    real_list = storage.Client.list_blobs

    def counting_list(self: Any, *args: Any, **kwargs: Any) -> Any:
        listings.append(str(kwargs.get("prefix")))
        return real_list(self, *args, **kwargs)

    def no_lookups(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a per-object request during the check")

    monkeypatch.setattr(storage.Client, "list_blobs", counting_list)
    monkeypatch.setattr(storage.Bucket, "get_blob", no_lookups)
    monkeypatch.setattr(storage.Blob, "exists", no_lookups)
    monkeypatch.setattr(storage.Blob, "reload", no_lookups)
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, spec)
    # 26 objects directly under the prefix at 10 a page: three pages of one listing.
    assert listings == ["shared/"] * 3
    monkeypatch.undo()
    with ctx.ledger.engine.connect() as conn:
        failed = {r.key: r.error for r in repo.failed_items(conn, run_id)}
    assert list(failed) == ["k3"] and f"gs://{gcs_env}/shared/k3.png" in failed["k3"]
    tick(ctx, load_catalog())


def test_images_moved_away_after_an_earlier_run_are_no_obstacle(
    tmp_path: Path, emu: Emulator
) -> None:
    """A location whose images were moved away after an earlier run: nothing is taken any
    more (the check looks at what is there, not at the ledger's record of it)."""
    folder = tmp_path / "out" / "shared"
    ctx = make_context(tmp_path, emu)
    first = submit(ctx, write_job(tmp_path / "alice", "alice", ALICE, out=str(folder)))
    run_to_end(ctx, emu, first)
    shutil.rmtree(folder)
    bob = submit(ctx, write_job(tmp_path / "bob", "bob", BOB, out=str(folder)))
    run_to_end(ctx, emu, bob)
    assert _items(ctx, bob)["k1"]["status"] == "succeeded"
