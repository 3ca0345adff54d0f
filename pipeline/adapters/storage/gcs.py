"""GcsStore: an output location under gs://bucket/prefix, through google-cloud-storage.

Owns create-only uploads (`if_generation_match=0`), adopting or refusing an object that is
already there (its sha256 travels in custom metadata `nanobatch-sha256`), retrying
transient failures, and turning lasting ones (403, 401, missing bucket, no credentials)
into a `StorageError` that names the bucket and the fix. Never creates buckets, never logs
credentials. Uses Application Default Credentials; anonymous under STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from pipeline.adapters.storage.base import (
    SHA256_METADATA_KEY,
    ObjectNotFound,
    StoredObject,
    check_name,
    sha256_file,
    sha256_hex,
)
from pipeline.adapters.storage.gcs_upload import multipart_upload
from pipeline.adapters.storage.retry import (
    DEFAULT_BASE_DELAY,
    DEFAULT_TRIES,
    is_transient_gcs_error,
)
from pipeline.adapters.storage.retry import retry_call as _retry_call
from pipeline.core.errors import ObjectConflict, StorageError, UsageError

if TYPE_CHECKING:
    from google.cloud.storage import Bucket, Client

T = TypeVar("T")

DEFAULT_PROJECT = "nanobatch-local"
"""Project passed to the client when none is given or set in GOOGLE_CLOUD_PROJECT (object
reads and writes do not use it; it only spares a project lookup)."""

LIST_PAGE_SIZE = 1000
"""Objects per page of a listing (the JSON API's maximum)."""

PUTS_IN_FLIGHT = 8
"""Image uploads a harvest keeps going at once. Each waits out a round trip to the service,
so over a network their number, not the CPU, sets the pace: with every answer 50 ms late
(benchmarks/delay_proxy.py) a 1 GB harvest stored 55 images/s with 4 in flight and about
100 with 8. Each holds one decoded image (1-3 MB): 16 went over 200 MiB of peak RSS."""

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_FIX = (
    "check the bucket exists and the credentials can write to it; nanobatch never creates buckets"
)
_HARVEST_HINT = "the work stays harvestable, run the tick again later"
_CREDENTIALS_FIX = (
    "no usable Google Cloud credentials: run `gcloud auth application-default login` or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (STORAGE_EMULATOR_HOST for "
    "an emulator)"
)


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """("bucket", "prefix") of gs://bucket/prefix; the prefix has no leading or trailing "/"."""
    if not uri.startswith("gs://"):
        raise UsageError(f"{uri!r} is not a gs:// uri")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise UsageError(f"{uri!r}: {bucket!r} is not a valid bucket name; use gs://bucket/prefix")
    if prefix:
        try:
            check_name(prefix)
        except ValueError:
            raise UsageError(f"{uri!r}: the prefix {prefix!r} has empty, . or .. parts") from None
    return bucket, prefix


def default_project(project: str | None = None) -> str:
    """The project for the client: the argument, GOOGLE_CLOUD_PROJECT, or nanobatch-local."""
    return project or os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT


class GcsStore:
    """gs://bucket/prefix. Thread-safe: one client shared by all threads (or, with
    `per_thread=True`, one per thread; measured on fake-gcs-server with 8-16 upload threads,
    the two were within noise of each other, so the cheaper shared client is the default)."""

    puts_in_flight: int | None = PUTS_IN_FLIGHT

    def __init__(
        self,
        uri: str,
        *,
        project: str | None = None,
        client: Client | None = None,
        per_thread: bool = False,
        tries: int = DEFAULT_TRIES,
        base_delay: float = DEFAULT_BASE_DELAY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket_name, self.prefix = parse_gs_uri(uri)
        self.base_uri = f"gs://{self.bucket_name}" + (f"/{self.prefix}" if self.prefix else "")
        self._project = default_project(project)
        self._shared = client
        self._per_thread = per_thread and client is None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._retry: dict[str, Any] = {"tries": tries, "base": base_delay, "sleep": sleep}

    def __repr__(self) -> str:
        return f"GcsStore({self.base_uri!r})"

    def connect(self) -> None:
        """Make the client now (imports, credentials), not on the first upload. Best effort:
        a failure here (no credentials) is met again, and reported, by the first upload,
        after the results are safe in the spool."""
        with contextlib.suppress(Exception):
            from google.api_core.exceptions import PreconditionFailed  # noqa: F401

            self._client()

    def uri_for(self, name: str) -> str:
        """gs://bucket/prefix/name."""
        return f"gs://{self.bucket_name}/{self._key(name)}"

    def check_writable(self) -> None:
        """Create and delete a small probe object under the prefix, or raise StorageError."""
        from google.api_core.exceptions import NotFound

        key = self._key(f".nanobatch-probe-{uuid.uuid4().hex}")
        self._call(
            lambda: (
                self._bucket()
                .blob(key)
                .upload_from_string(
                    b"", content_type="text/plain", if_generation_match=0, retry=None
                )
            ),
            "create a probe object in",
            transient_hint=_unreachable_hint(),
        )
        # NotFound: an earlier try's delete took effect and its answer was lost.
        with contextlib.suppress(NotFound):
            self._call(lambda: self._bucket().blob(key).delete(retry=None), "delete from", NotFound)

    def put_once(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        overwrite: bool = False,
        sha256: str | None = None,
    ) -> StoredObject:
        """Create-only upload; adopt an object with the same sha256; refuse different bytes."""
        from google.api_core.exceptions import PreconditionFailed

        key = self._key(name)
        digest = sha256 or sha256_hex(data)
        meta = {**metadata, SHA256_METADATA_KEY: digest}
        for _ in range(3):
            try:
                self._upload(key, data, content_type, meta, create_only=True)
                return StoredObject(self.uri_for(name), digest, len(data), adopted=False)
            except PreconditionFailed:
                existing = self._stored_sha256(key)
            if existing == digest:
                return StoredObject(self.uri_for(name), digest, len(data), adopted=True)
            if existing is not None and not overwrite:
                raise ObjectConflict(
                    f"{self.uri_for(name)} already exists with different bytes (sha256 "
                    f"{existing[:12]}..., new {digest[:12]}...); set [output] overwrite = true "
                    "to replace it, or move the old object away"
                )
            if existing is not None:
                self._upload(key, data, content_type, meta, create_only=False)
                return StoredObject(self.uri_for(name), digest, len(data), adopted=False)
        raise StorageError(
            f"{self.uri_for(name)} keeps appearing and vanishing; run the tick again"
        )

    def sync(self) -> None:
        """Nothing to do: an upload that returned is durable."""

    def put_file(self, name: str, path: Path, *, content_type: str) -> str:
        """Upload (or replace) `name` from a local file; GCS makes the swap atomic."""
        key = self._key(name)
        self._call(
            lambda: (
                self._bucket()
                .blob(key)
                .upload_from_filename(str(path), content_type=content_type, retry=None)
            ),
            "upload to",
        )
        return self.uri_for(name)

    def put_file_once(
        self, name: str, path: Path, *, content_type: str, metadata: Mapping[str, str]
    ) -> StoredObject:
        """Create-only upload of a local file (`if_generation_match=0`, resumable for large
        files, so the object appears whole or not at all); adopt an object with the same
        sha256, refuse different bytes."""
        from google.api_core.exceptions import PreconditionFailed

        key = self._key(name)
        digest = sha256_file(path)
        size = path.stat().st_size

        def upload() -> None:
            blob = self._bucket().blob(key)
            blob.metadata = {**metadata, SHA256_METADATA_KEY: digest}
            blob.upload_from_filename(
                str(path), content_type=content_type, if_generation_match=0, retry=None
            )

        for _ in range(3):
            try:
                self._call(upload, "upload to", PreconditionFailed)
                return StoredObject(self.uri_for(name), digest, size, adopted=False)
            except PreconditionFailed:
                existing = self._stored_sha256(key)
            if existing == digest:
                return StoredObject(self.uri_for(name), digest, size, adopted=True)
            if existing is not None:
                raise ObjectConflict(
                    f"{self.uri_for(name)} already exists with different bytes (sha256 "
                    f"{existing[:12]}..., new {digest[:12]}...); remove it or choose another "
                    "location"
                )
        raise StorageError(f"{self.uri_for(name)} keeps appearing and vanishing; try again")

    def existing_sha256(self, name: str) -> str | None:
        """sha256 of the object at `name` (from its metadata, else by download), or None."""
        return self._stored_sha256(self._key(name))

    def read_bytes(self, uri: str) -> bytes:
        """Bytes of any gs:// object (any bucket these credentials can read)."""
        from google.api_core.exceptions import NotFound

        bucket, _, key = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not key:
            raise UsageError(f"{uri!r} is not a gs://bucket/object uri")
        try:
            return self._call(
                lambda: bytes(
                    self._client().bucket(bucket).blob(key).download_as_bytes(retry=None)
                ),
                "read from",
                NotFound,
                bucket=bucket,
            )
        except NotFound as exc:
            raise ObjectNotFound(f"{uri} does not exist (any more)") from exc

    def iter_names(self) -> Iterator[str]:
        """Names directly under the prefix, from one paged listing (delimiter "/", names only),
        a page in memory at a time; each page request is retried like any other call."""
        base = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            page: Callable[[], tuple[list[str], str | None]] = partial(self._list_page, base, token)
            names, token = self._call(page, "list objects in")
            for name in names:
                name = name[len(base) :]
                if name and not name.startswith("."):
                    yield name
            if not token:
                return

    def open_reader(self, uri: str) -> tuple[int, BinaryIO]:
        """(size, a seekable binary stream) of any gs:// object, read in chunks as it is
        consumed (a reference image streamed into its upload); ObjectNotFound when there is
        none, StorageError naming the bucket when it cannot be read."""
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not key:
            raise UsageError(f"{uri!r} is not a gs://bucket/object uri")
        blob = self._call(
            lambda: self._client().bucket(bucket).get_blob(key, retry=None),
            "read from",
            bucket=bucket,
        )
        if blob is None:
            raise ObjectNotFound(f"{uri} does not exist (any more)")
        reader = self._call(lambda: blob.open("rb", chunk_size=1 << 20), "read from", bucket=bucket)
        return int(blob.size or 0), cast(BinaryIO, reader)

    # -- internals -------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _client(self) -> Client:
        """The caller's client, this thread's client, or the one shared client."""
        if self._shared is not None:
            return self._shared
        if self._per_thread:
            client = getattr(self._local, "client", None)
            if client is None:
                client = self._local.client = self._new_client()
            return client
        with self._lock:
            if self._shared is None:
                self._shared = self._new_client()
            return self._shared

    def _new_client(self) -> Client:
        from google.cloud import storage

        client = storage.Client(project=self._project)
        _read_environment_once(client)
        return client

    def _bucket(self) -> Bucket:
        return self._client().bucket(self.bucket_name)

    def _upload(
        self,
        key: str,
        data: bytes,
        content_type: str,
        meta: Mapping[str, str],
        *,
        create_only: bool,
    ) -> None:
        from google.api_core.exceptions import PreconditionFailed

        def upload() -> None:
            multipart_upload(
                self._client(),  # inside the call: no credentials becomes a StorageError
                self.bucket_name,
                key,
                data,
                content_type=content_type,
                metadata=meta,
                create_only=create_only,
            )

        self._call(upload, "upload to", PreconditionFailed)

    def _list_page(self, base: str, token: str | None) -> tuple[list[str], str | None]:
        """One page of the listing under `base`: its object names and the next page's token."""
        blobs = self._client().list_blobs(
            self.bucket_name,
            prefix=base or None,
            delimiter="/",
            page_token=token,
            page_size=LIST_PAGE_SIZE,
            fields="items(name),prefixes,nextPageToken",
            retry=None,
        )
        page = next(blobs.pages, None)
        names = [blob.name for blob in page] if page is not None else []
        return names, blobs.next_page_token

    def _stored_sha256(self, key: str) -> str | None:
        """sha256 of an object: from its `nanobatch-sha256` metadata, else by download."""
        blob = self._call(lambda: self._bucket().get_blob(key, retry=None), "read from")
        if blob is None:
            return None
        recorded = (blob.metadata or {}).get(SHA256_METADATA_KEY)
        if recorded:
            return str(recorded)
        return sha256_hex(self._call(lambda: blob.download_as_bytes(retry=None), "read from"))

    def _call(
        self,
        fn: Callable[[], T],
        action: str,
        *passthrough: type[BaseException],
        bucket: str | None = None,
        transient_hint: str = _HARVEST_HINT,
    ) -> T:
        """Run `fn` with retries; lasting failures become StorageError naming the bucket."""
        try:
            return _retry_call(fn, is_transient=is_transient_gcs_error, **self._retry)
        except passthrough:
            raise
        except Exception as exc:
            error = storage_error(
                exc, action, bucket or self.bucket_name, self._retry["tries"], transient_hint
            )
            if error is None:
                raise
            raise error from exc


def storage_error(
    exc: BaseException, action: str, bucket: str, tries: int, transient_hint: str = _HARVEST_HINT
) -> StorageError | None:
    """The StorageError for a lasting (or exhausted transient) GCS failure; None for a bug.
    `transient_hint` says what to do when retries ran out (harvest: tick again later)."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    where = f"gs://{bucket}"
    if isinstance(exc, auth.DefaultCredentialsError | auth.RefreshError):
        return StorageError(f"cannot {action} {where}: {_CREDENTIALS_FIX}")
    if is_transient_gcs_error(exc):
        return StorageError(
            f"cannot {action} {where}: still failing after {tries} tries "
            f"({_describe(exc)}); {transient_hint}"
        )
    if isinstance(exc, api.NotFound):
        return StorageError(f"cannot {action} {where}: the bucket does not exist (404); {_FIX}")
    if isinstance(exc, api.Forbidden | api.Unauthorized):
        return StorageError(f"cannot {action} {where}: access denied ({exc.code}); {_FIX}")
    if isinstance(exc, api.GoogleAPICallError | auth.GoogleAuthError):
        return StorageError(f"cannot {action} {where}: {_describe(exc)}; {_FIX}")
    return None


def _read_environment_once(client: Client) -> None:
    """Resolve the proxy and CA-bundle settings of the environment once, for the storage
    host, instead of on every request. requests does it per request when `trust_env` is on:
    it walks all of os.environ for proxies and stats ~/.netrc each time, pure Python under
    the interpreter lock that cost about 0.3 ms of a 1 MB upload's 3 ms on fake-gcs-server.
    The same settings apply (HTTPS_PROXY, NO_PROXY for this host, REQUESTS_CA_BUNDLE); a
    netrc entry is no longer consulted, which only ever could have replaced the bearer token
    of an authorized request. Token refreshes use their own session and are untouched."""
    from requests.utils import get_environ_proxies

    session = client._http  # the AuthorizedSession (a requests.Session) the client sends on
    host_url = str(client._connection.API_BASE_URL)
    proxies = get_environ_proxies(host_url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    session.trust_env = False
    for scheme, proxy in proxies.items():
        session.proxies.setdefault(scheme, proxy)
    if bundle and session.verify is True:
        session.verify = bundle


def _unreachable_hint() -> str:
    """What to check when storage cannot be reached at all (before anything was written)."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    where = (
        f"that the emulator at STORAGE_EMULATOR_HOST={emulator} is running"
        if emulator
        else "the network to storage.googleapis.com (and any proxy settings)"
    )
    return f"check {where}"


def _describe(exc: BaseException) -> str:
    """A short, credential-free description of an error: type, HTTP code, first line."""
    code = getattr(exc, "code", None)
    first = str(exc).splitlines()[0] if str(exc) else ""
    text = f"{type(exc).__name__}" + (f" {code}" if isinstance(code, int) else "")
    return f"{text}: {first[:200]}" if first else text
