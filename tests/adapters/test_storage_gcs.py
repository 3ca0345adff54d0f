"""GcsStore against fake-gcs-server: create-only uploads, adoption, conflicts, metadata,
concurrency, lasting errors (missing bucket, 403) and retried transient errors (503)."""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pytest
from google.cloud import storage

from pipeline.adapters.storage import SHA256_METADATA_KEY, ObjectNotFound, StoredObject, open_store
from pipeline.adapters.storage.gcs import GcsStore, parse_gs_uri
from pipeline.adapters.storage.gcs_upload import Parts
from pipeline.core.errors import ObjectConflict, StorageError, UsageError

if TYPE_CHECKING:
    from tests.gcs_fixture import GcsServer

pytestmark = pytest.mark.gcs

META = {"nanobatch-run": "r1", "nanobatch-key": "k/1", "nanobatch-cost-usd": "0.067"}


def _client() -> storage.Client:
    return storage.Client(project="nanobatch-test")


def _put(store: GcsStore, name: str, data: bytes, *, overwrite: bool = False) -> StoredObject:
    return store.put_once(name, data, content_type="image/png", metadata=META, overwrite=overwrite)


def _no_sleep(_: float) -> None:
    return None


def test_parse_gs_uri() -> None:
    assert parse_gs_uri("gs://b-1/") == ("b-1", "")
    assert parse_gs_uri("gs://b-1/out/job/2026-01-01/") == ("b-1", "out/job/2026-01-01")
    for bad in ["gs://", "gs://B/x", "gs://b/../x", "gs://b/a//c", "s3://b/x"]:
        with pytest.raises(UsageError):
            parse_gs_uri(bad)


def test_open_store_makes_a_gcs_store_without_network() -> None:
    store = open_store("gs://some-bucket/p/q/", project="p")
    assert isinstance(store, GcsStore)
    assert store.base_uri == "gs://some-bucket/p/q"
    assert store.uri_for("a.png") == "gs://some-bucket/p/q/a.png"


def test_put_once_writes_adopts_and_round_trips_metadata(gcs_env: str) -> None:
    store = GcsStore(f"gs://{gcs_env}/run/2026-01-01")
    first = _put(store, "k.png", b"png-bytes")
    digest = hashlib.sha256(b"png-bytes").hexdigest()
    assert first == StoredObject(f"gs://{gcs_env}/run/2026-01-01/k.png", digest, 9, False)
    blob = _client().bucket(gcs_env).get_blob("run/2026-01-01/k.png")
    assert blob is not None and blob.content_type == "image/png"
    assert blob.metadata == {**META, SHA256_METADATA_KEY: digest}
    assert blob.download_as_bytes() == b"png-bytes"
    generation = blob.generation
    assert _put(store, "k.png", b"png-bytes").adopted
    assert store.existing_sha256("k.png") == digest
    assert store.existing_sha256("nope.png") is None
    again = _client().bucket(gcs_env).get_blob("run/2026-01-01/k.png")
    assert again is not None and again.generation == generation  # nothing was rewritten


def test_different_bytes_conflict_unless_overwrite(gcs_env: str) -> None:
    store = GcsStore(f"gs://{gcs_env}")
    _put(store, "k.png", b"one")
    with pytest.raises(ObjectConflict, match=f"gs://{gcs_env}/k.png"):
        _put(store, "k.png", b"two")
    assert _client().bucket(gcs_env).blob("k.png").download_as_bytes() == b"one"
    replaced = _put(store, "k.png", b"two", overwrite=True)
    assert not replaced.adopted
    assert _client().bucket(gcs_env).blob("k.png").download_as_bytes() == b"two"
    assert _put(store, "k.png", b"two", overwrite=True).adopted


def test_create_only_against_an_object_without_our_metadata(gcs_env: str) -> None:
    """The 412 path: a foreign object (no nanobatch-sha256) is hashed by download."""
    _client().bucket(gcs_env).blob("p/a.png").upload_from_string(b"theirs")
    _client().bucket(gcs_env).blob("p/b.png").upload_from_string(b"same")
    store = GcsStore(f"gs://{gcs_env}/p")
    with pytest.raises(ObjectConflict):
        _put(store, "a.png", b"ours")
    assert _put(store, "b.png", b"same").adopted
    assert store.existing_sha256("a.png") == hashlib.sha256(b"theirs").hexdigest()


@pytest.mark.parametrize("per_thread", [True, False])
def test_eight_threads_same_object_one_write_no_error(gcs_env: str, per_thread: bool) -> None:
    store = GcsStore(f"gs://{gcs_env}", per_thread=per_thread)
    barrier = threading.Barrier(8)
    data = bytes(range(256)) * 400

    def put(_: int) -> bool:
        barrier.wait()
        return _put(store, "same.png", data).adopted

    with ThreadPoolExecutor(8) as pool:
        adopted = list(pool.map(put, range(8)))
    assert adopted.count(False) == 1
    assert [b.name for b in _client().list_blobs(gcs_env)] == ["same.png"]


def test_parallel_uploads_of_different_objects(gcs_env: str) -> None:
    store = GcsStore(f"gs://{gcs_env}/many")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _put(store, f"{i}.png", b"x%d" % i), range(40)))
    assert not any(r.adopted for r in results)
    assert len(list(_client().list_blobs(gcs_env, prefix="many/"))) == 40


def test_put_file_replaces_and_read_bytes(gcs_env: str, tmp_path: Path) -> None:
    store = GcsStore(f"gs://{gcs_env}/out")
    src = tmp_path / "manifest.parquet"
    src.write_bytes(b"v1")
    uri = store.put_file("manifest.parquet", src, content_type="application/vnd.apache.parquet")
    src.write_bytes(b"v2")
    assert store.put_file("manifest.parquet", src, content_type="application/vnd.apache.parquet")
    assert uri == f"gs://{gcs_env}/out/manifest.parquet"
    assert store.read_bytes(uri) == b"v2"
    blob = _client().bucket(gcs_env).get_blob("out/manifest.parquet")
    assert blob is not None and blob.content_type == "application/vnd.apache.parquet"
    with pytest.raises(ObjectNotFound, match=r"gone\.png"):
        store.read_bytes(f"gs://{gcs_env}/out/gone.png")


def test_put_file_once_is_create_only_and_adopts_same_bytes(gcs_env: str, tmp_path: Path) -> None:
    """A local file uploaded create-only with its sha256 in metadata; the same bytes again
    are adopted (the object keeps its generation); other bytes are refused."""
    store = GcsStore(f"gs://{gcs_env}/wds")
    src = tmp_path / "s.tar"
    src.write_bytes(b"tar" * 5000)
    first = store.put_file_once(
        "s-000000.tar", src, content_type="application/x-tar", metadata={"nanobatch-job": "j"}
    )
    assert (first.uri, first.size, first.adopted) == (
        f"gs://{gcs_env}/wds/s-000000.tar",
        15000,
        False,
    )
    blob = _client().bucket(gcs_env).get_blob("wds/s-000000.tar")
    assert blob is not None and blob.download_as_bytes() == b"tar" * 5000
    assert blob.content_type == "application/x-tar"
    assert (blob.metadata or {})[SHA256_METADATA_KEY] == hashlib.sha256(b"tar" * 5000).hexdigest()
    generation = blob.generation

    again = store.put_file_once("s-000000.tar", src, content_type="application/x-tar", metadata={})
    assert again.adopted
    other = tmp_path / "o.tar"
    other.write_bytes(b"other")
    with pytest.raises(ObjectConflict, match=r"s-000000\.tar"):
        store.put_file_once("s-000000.tar", other, content_type="application/x-tar", metadata={})
    after = _client().bucket(gcs_env).get_blob("wds/s-000000.tar")
    assert after is not None and after.generation == generation


def test_check_writable_leaves_nothing_behind(gcs_env: str) -> None:
    GcsStore(f"gs://{gcs_env}/prefix").check_writable()
    assert list(_client().list_blobs(gcs_env)) == []


def test_missing_bucket_is_a_storage_error_naming_it(gcs_env: str) -> None:
    store = GcsStore("gs://no-such-bucket-nb/x", sleep=_no_sleep)
    with pytest.raises(StorageError, match=r"gs://no-such-bucket-nb.*never creates buckets"):
        store.check_writable()
    with pytest.raises(StorageError, match="no-such-bucket-nb") as info:
        _put(store, "a.png", b"x")
    assert info.value.exit_code == 1
    assert not _client().bucket("no-such-bucket-nb").exists()


# -- transient and lasting errors through a fault-injecting proxy ------------------------


class FaultProxy:
    """A tiny HTTP proxy in front of fake-gcs-server that answers the next N object requests
    with a chosen status instead of forwarding them. Bucket requests (google-cloud-storage
    3.x fetches bucket metadata in a background thread) always pass through."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.fail_next = 0
        self.fail_status = 503
        self.requests = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _take_fault(self, path: str) -> int | None:
        if "/o" not in path.partition("?")[0]:
            return None
        with self.lock:
            self.requests += 1
            if self.fail_next:
                self.fail_next -= 1
                return self.fail_status
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = proxy._take_fault(self.path)
                if status is not None:
                    payload = b'{"error": {"code": %d, "message": "injected"}}' % status
                    self._answer(status, [("Content-Type", "application/json")], payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.netloc, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                skip = {"transfer-encoding", "connection", "content-length"}
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in skip]
                self._answer(response.status, kept, response.read())
                conn.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fault_proxy(
    gcs_env: str, gcs_server: GcsServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(gcs_server.url)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    yield proxy
    proxy.close()


def test_transient_503s_are_retried_with_backoff(gcs_env: str, fault_proxy: FaultProxy) -> None:
    sleeps: list[float] = []
    store = GcsStore(f"gs://{gcs_env}", sleep=sleeps.append)
    fault_proxy.fail_next = 2
    assert not _put(store, "k.png", b"x").adopted
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] / 2
    assert _client().bucket(gcs_env).blob("k.png").download_as_bytes() == b"x"


def test_429_then_success_on_read(gcs_env: str, fault_proxy: FaultProxy) -> None:
    store = GcsStore(f"gs://{gcs_env}", sleep=_no_sleep)
    _put(store, "k.png", b"x")
    fault_proxy.fail_status, fault_proxy.fail_next = 429, 1
    assert store.read_bytes(f"gs://{gcs_env}/k.png") == b"x"


def test_transient_errors_that_never_stop_become_a_storage_error(
    gcs_env: str, fault_proxy: FaultProxy
) -> None:
    store = GcsStore(f"gs://{gcs_env}", sleep=_no_sleep, tries=3)
    fault_proxy.fail_next = 100
    before = fault_proxy.requests
    with pytest.raises(StorageError, match=f"gs://{gcs_env}.*after 3 tries"):
        _put(store, "k.png", b"x")
    assert fault_proxy.requests - before == 3


def test_403_is_lasting_and_not_retried(gcs_env: str, fault_proxy: FaultProxy) -> None:
    store = GcsStore(f"gs://{gcs_env}", sleep=_no_sleep)
    fault_proxy.fail_status, fault_proxy.fail_next = 403, 1
    before = fault_proxy.requests
    with pytest.raises(StorageError, match=f"gs://{gcs_env}: access denied.*never creates"):
        store.check_writable()
    assert fault_proxy.requests - before == 1


def test_connection_refused_is_retried_then_reported(
    gcs_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # discard port: refused
    sleeps: list[float] = []
    store = GcsStore(f"gs://{gcs_env}", sleep=sleeps.append, tries=3)
    with pytest.raises(StorageError, match=f"gs://{gcs_env}.*after 3 tries"):
        _put(store, "k.png", b"x")
    assert len(sleeps) == 2


# -- listing (the names already taken at a location) -------------------------------------


def test_iter_names_lists_the_prefix_children_a_page_at_a_time(
    gcs_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects directly under the prefix, not deeper ones nor hidden ones nor other prefixes."""
    from pipeline.adapters.storage import gcs

    monkeypatch.setattr(gcs, "LIST_PAGE_SIZE", 2)
    bucket = _client().bucket(gcs_env)
    for name in ["p/a.png", "p/b.jpg", "p/c.txt", "p/.nanobatch-probe-x", "p/sub/d.png", "q/e.png"]:
        bucket.blob(name).upload_from_string(b"x")
    assert sorted(GcsStore(f"gs://{gcs_env}/p").iter_names()) == ["a.png", "b.jpg", "c.txt"]
    assert sorted(GcsStore(f"gs://{gcs_env}").iter_names()) == []
    assert list(GcsStore(f"gs://{gcs_env}/nothing-here").iter_names()) == []


def test_iter_names_retries_a_page_that_fails(
    gcs_env: str, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient error on a later page retries that page, not the whole listing."""
    from pipeline.adapters.storage import gcs

    monkeypatch.setattr(gcs, "LIST_PAGE_SIZE", 1)
    sleeps: list[float] = []
    store = GcsStore(f"gs://{gcs_env}/p", sleep=sleeps.append)
    for i in range(3):
        _put(store, f"{i}.png", b"x")
    names = store.iter_names()
    first = next(names)
    fault_proxy.fail_next = 1
    assert sorted([first, *names]) == ["0.png", "1.png", "2.png"]
    assert len(sleeps) == 1


def test_iter_names_of_a_missing_bucket_is_a_storage_error(gcs_env: str) -> None:
    store = GcsStore("gs://no-such-bucket-nb/x", sleep=_no_sleep)
    with pytest.raises(StorageError, match=r"cannot list objects in gs://no-such-bucket-nb"):
        list(store.iter_names())


def test_an_upload_body_in_parts_has_the_joined_length_and_iterates_again() -> None:
    """The multipart body is sent part by part around the image (no joined copy): its length
    (the Content-Length) is the parts' sum, and a resent request iterates it afresh."""
    image = b"\x89PNG" * 1000
    body = Parts(b"head", image, b"tail")
    assert len(body) == 8 + len(image)
    assert b"".join(body) == b"head" + image + b"tail"
    assert b"".join(body) == b"head" + image + b"tail"
    assert list(body)[1] is image  # the image itself, not a copy
