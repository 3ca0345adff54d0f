"""LocalStore (create-once files), open_store, the retry helper, and the manifest writers."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.adapters.storage import LocalStore, ObjectNotFound, StoredObject, open_store
from pipeline.adapters.storage.retry import backoff_delay, retry_call
from pipeline.adapters.writers import MANIFEST_SCHEMA, REJECTS_HEADER, write_csv, write_parquet
from pipeline.core.errors import ObjectConflict, StorageError, UsageError

META = {"nanobatch-key": "k"}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _put(
    store: LocalStore,
    name: str,
    data: bytes,
    *,
    overwrite: bool = False,
    sha256: str | None = None,
) -> StoredObject:
    return store.put_once(
        name, data, content_type="image/png", metadata=META, overwrite=overwrite, sha256=sha256
    )


def test_open_store_picks_the_adapter(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "out")), LocalStore)
    assert open_store(f"file://{tmp_path}/out").base_uri == str(tmp_path / "out")
    assert open_store("rel/dir").base_uri == os.path.abspath("rel/dir")
    with pytest.raises(UsageError, match="s3://"):
        open_store("s3://bucket/x")


def test_put_once_writes_once_then_adopts_same_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    first = _put(store, "a.png", b"one")
    assert first.uri == str(tmp_path / "out" / "a.png")
    assert (first.sha256, first.size, first.adopted) == (
        hashlib.sha256(b"one").hexdigest(),
        3,
        False,
    )
    again = _put(store, "a.png", b"one")
    assert again.adopted and again.sha256 == first.sha256
    assert Path(first.uri).read_bytes() == b"one"
    assert store.existing_sha256("a.png") == first.sha256
    assert store.existing_sha256("missing.png") is None
    assert _leftovers(tmp_path / "out") == []


def test_different_bytes_conflict_and_the_file_is_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _put(store, "a.png", b"one")
    with pytest.raises(ObjectConflict, match=r"a\.png"):
        _put(store, "a.png", b"two")
    assert (tmp_path / "a.png").read_bytes() == b"one"
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_and_same_bytes_still_adopt(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _put(store, "a.png", b"one")
    replaced = _put(store, "a.png", b"two", overwrite=True)
    assert not replaced.adopted
    assert (tmp_path / "a.png").read_bytes() == b"two"
    assert _put(store, "a.png", b"two", overwrite=True).adopted
    assert _put(store, "new.png", b"three", overwrite=True).adopted is False
    assert _leftovers(tmp_path) == []


def test_a_given_sha256_is_used(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    digest = hashlib.sha256(b"x").hexdigest()
    assert _put(store, "x.png", b"x", sha256=digest).sha256 == digest


def test_a_race_lost_after_the_first_look_still_adopts(tmp_path: Path) -> None:
    """Another writer creates the file between our existence check and our link."""
    store = LocalStore(tmp_path)
    real_write = store._write_temp

    def write_then_race(final: Path, data: bytes) -> Path:
        tmp = real_write(final, data)
        final.write_bytes(data)
        return tmp

    store._write_temp = write_then_race  # type: ignore[method-assign]
    assert _put(store, "r.png", b"same").adopted
    assert _leftovers(tmp_path) == []


def test_eight_threads_same_name_same_bytes_make_one_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = os.urandom(256 * 1024)
    barrier = threading.Barrier(8)

    def put(_: int) -> bool:
        barrier.wait()
        return _put(store, "same.png", data).adopted

    with ThreadPoolExecutor(8) as pool:
        adopted = list(pool.map(put, range(8)))
    assert adopted.count(False) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["same.png"]
    assert (tmp_path / "same.png").read_bytes() == data


def test_eight_threads_different_bytes_one_wins_the_rest_conflict(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    barrier = threading.Barrier(8)

    def put(i: int) -> str:
        barrier.wait()
        try:
            _put(store, "x.png", bytes([i]) * 1000)
            return "stored"
        except ObjectConflict:
            return "conflict"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(put, range(8)))
    assert sorted(outcomes) == ["conflict"] * 7 + ["stored"]
    assert _leftovers(tmp_path) == []


def test_put_file_replaces_atomically(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    src = tmp_path / "m.parquet"
    src.write_bytes(b"v1")
    uri = store.put_file("manifest.parquet", src, content_type="application/vnd.apache.parquet")
    src.write_bytes(b"v2")
    assert store.put_file("manifest.parquet", src, content_type="x") == uri
    assert Path(uri).read_bytes() == b"v2" and src.exists()
    assert _leftovers(tmp_path / "out") == []


def test_read_bytes_takes_paths_and_file_uris(tmp_path: Path) -> None:
    other = tmp_path / "earlier-run" / "img.png"
    other.parent.mkdir()
    other.write_bytes(b"img")
    store = LocalStore(tmp_path / "out")
    assert store.read_bytes(str(other)) == b"img"
    assert store.read_bytes(other.as_uri()) == b"img"
    with pytest.raises(ObjectNotFound, match="gone"):
        store.read_bytes(str(tmp_path / "gone.png"))


def test_check_writable_creates_the_folder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a" / "b")
    store.check_writable()
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_check_writable_fails_naming_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = LocalStore(blocker / "sub")
    with pytest.raises(StorageError, match=str(blocker / "sub")) as info:
        store.check_writable()
    assert info.value.exit_code == 1
    with pytest.raises(StorageError, match="sub"):
        _put(store, "a.png", b"x")


@pytest.mark.parametrize("name", ["", ".", "..", "../x.png", "a//b", "/abs", "a\\b", "a\x00b"])
def test_names_cannot_escape_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        LocalStore(tmp_path).uri_for(name)


def test_retry_call_retries_transient_errors_then_returns() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    result = retry_call(
        flaky, is_transient=lambda e: isinstance(e, ConnectionError), sleep=sleeps.append
    )
    assert result == "ok" and len(calls) == 3
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4


def test_retry_call_gives_up_after_the_tries_and_never_retries_lasting_errors() -> None:
    sleeps: list[float] = []

    def always(exc: Exception) -> None:
        raise exc

    with pytest.raises(ConnectionError):
        retry_call(
            lambda: always(ConnectionError()),
            is_transient=lambda e: True,
            tries=4,
            sleep=sleeps.append,
        )
    assert len(sleeps) == 3
    with pytest.raises(KeyError):
        retry_call(lambda: always(KeyError()), is_transient=lambda e: False, sleep=sleeps.append)
    assert len(sleeps) == 3


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(i, base=0.2, cap=1.0, rng=rng) for i in range(6)]
    assert all(
        0.5 * min(1.0, 0.2 * 2**i) <= d <= min(1.0, 0.2 * 2**i) for i, d in enumerate(delays)
    )


def _manifest_row(i: int) -> dict[str, object]:
    return {
        "key": f"k{i}", "status": "succeeded", "attempts": 1, "model": "m",
        "uri": f"/o/k{i}.png", "sha256": "ab" * 32, "input_tokens": 10,
        "output_image_tokens": 1120, "output_text_tokens": 0, "thinking_tokens": 5,
        "cost_usd": 0.067, "cached": i % 2 == 0, "error": None, "prompt": f"p {i}",
        "aspect_ratio": "1:1", "image_size": "2K", "extra": "ignored",
    }  # fmt: skip


def test_write_parquet_streams_batches_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "manifest.parquet"
    produced: list[int] = []

    def rows() -> Iterator[dict[str, object]]:
        for i in range(25):
            produced.append(i)
            yield _manifest_row(i)

    assert write_parquet(rows(), path, MANIFEST_SCHEMA, batch_rows=10) == 25
    table = pq.read_table(path)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    first = table.slice(0, 1).to_pylist()[0]
    assert first["key"] == "k0" and first["cached"] is True and first["error"] is None
    assert table.column("cost_usd").to_pylist()[24] == 0.067


def test_write_parquet_empty_and_missing_fields(tmp_path: Path) -> None:
    assert write_parquet([], tmp_path / "e.parquet", MANIFEST_SCHEMA) == 0
    assert pq.read_table(tmp_path / "e.parquet").schema.equals(MANIFEST_SCHEMA)
    row = {"key": "k", "status": "failed", "attempts": 3, "error": "IMAGE_SAFETY"}
    write_parquet([row], tmp_path / "f.parquet", MANIFEST_SCHEMA)
    back = pq.read_table(tmp_path / "f.parquet").to_pylist()[0]
    assert back["uri"] is None and back["error"] == "IMAGE_SAFETY"


def test_write_parquet_refuses_null_in_required_columns(tmp_path: Path) -> None:
    rows = [_manifest_row(0), {"status": "failed", "attempts": 1}]
    with pytest.raises(ValueError, match=r"row 2: column 'key'"):
        write_parquet(rows, tmp_path / "bad.parquet", MANIFEST_SCHEMA)


def test_write_parquet_other_schema(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("n", pa.int64())])
    assert write_parquet(({"n": i} for i in range(5)), tmp_path / "n.parquet", schema, 2) == 5
    assert pq.read_table(tmp_path / "n.parquet").column("n").to_pylist() == [0, 1, 2, 3, 4]


def test_write_csv_rejects(tmp_path: Path) -> None:
    path = tmp_path / "rejects.csv"
    rows: list[Mapping[str, object] | Sequence[object]] = [
        (3, "k,1", 'empty "prompt"'),
        {"row": 5, "key": "ü/2", "reason": "duplicate key\nsecond line"},
        {"row": 6, "key": None},
    ]
    assert write_csv(iter(rows), path, REJECTS_HEADER) == 3
    with path.open(newline="", encoding="utf-8") as fh:
        back = list(csv.reader(fh))
    assert back == [
        ["row", "key", "reason"],
        ["3", "k,1", 'empty "prompt"'],
        ["5", "ü/2", "duplicate key\nsecond line"],
        ["6", "", ""],
    ]
    assert write_csv([], tmp_path / "empty.csv", REJECTS_HEADER) == 0
    assert (tmp_path / "empty.csv").read_bytes() == b"row,key,reason\r\n"


def test_put_once_sweeps_a_dead_writers_temp_file(tmp_path: Path) -> None:
    """A temp file left by a process killed mid-write is removed by the next writer."""
    import subprocess
    import sys

    from pipeline.adapters.storage.local import _HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".k.png.{_HOST}.{dead.pid}.0123.tmp"
    leftover.write_bytes(b"half")
    live = tmp_path / f".k.png.{_HOST}.{os.getpid()}.4567.tmp"
    live.write_bytes(b"in progress")

    LocalStore(tmp_path).put_once("k.png", b"image", content_type="image/png", metadata={})

    assert not leftover.exists()
    assert live.exists()
    assert (tmp_path / "k.png").read_bytes() == b"image"


def test_put_file_once_links_whole_files_adopts_same_and_refuses_other_bytes(
    tmp_path: Path,
) -> None:
    """A file stored create-once: it appears whole under its name, the same bytes again are
    adopted, other bytes are refused and left alone, and no temporary file stays behind."""
    store = LocalStore(tmp_path / "out")
    src = tmp_path / "staged.tar"
    src.write_bytes(b"shard" * 1000)
    first = store.put_file_once("s-000000.tar", src, content_type="application/x-tar", metadata={})
    final = tmp_path / "out" / "s-000000.tar"
    assert (first.uri, first.size, first.adopted) == (str(final), 5000, False)
    assert first.sha256 == hashlib.sha256(b"shard" * 1000).hexdigest()
    assert final.read_bytes() == b"shard" * 1000
    src.unlink()  # the stored file does not depend on the staged one
    assert final.read_bytes() == b"shard" * 1000

    src.write_bytes(b"shard" * 1000)
    again = store.put_file_once("s-000000.tar", src, content_type="application/x-tar", metadata={})
    assert again.adopted and again.sha256 == first.sha256
    other = tmp_path / "other.tar"
    other.write_bytes(b"other")
    with pytest.raises(ObjectConflict, match=r"s-000000\.tar"):
        store.put_file_once("s-000000.tar", other, content_type="application/x-tar", metadata={})
    assert final.read_bytes() == b"shard" * 1000
    assert _leftovers(tmp_path / "out") == []


def test_iter_names_lists_the_folder_once(tmp_path: Path) -> None:
    """Entries directly in the folder, hidden ones (temporary files, probes) left out; a
    folder not made yet has none; a file where the folder should be is a StorageError."""
    store = LocalStore(tmp_path / "out")
    assert list(store.iter_names()) == []
    _put(store, "a.png", b"a")
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "deeper.png").write_bytes(b"d")
    (tmp_path / "out" / ".a.png.host.1.tmp").write_bytes(b"t")
    (tmp_path / "out" / "notes.txt").write_bytes(b"n")
    assert sorted(store.iter_names()) == ["a.png", "notes.txt", "sub"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError, match="cannot list the output folder"):
        list(LocalStore(tmp_path / "file").iter_names())
