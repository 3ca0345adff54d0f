"""Reference images uploaded through the Files API, once per image (by sha256), reused while
they live (CONTRACT.md section 9, DESIGN.md "New lanes, same guarantees").

A batch's images are made ready just before its request file is built: an upload with more
than 24 hours to live is reused, anything else is uploaded again. An upload is written to the
ledger as an intent (state `uploading`, with the file name nanobatch chose) and committed
before the bytes are sent, so a kill between the upload and its record is found again by that
name on the next tick: it wastes at most one upload, and a line never names a file the
ledger does not know. The bytes are hashed on their way out; an image whose bytes are no
longer the ones recorded at submit is not sent.

Items whose image cannot be read or uploaded any more fail for good before the batch is
created (`not_sent`, no try counted), naming the image; the rest of the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, Final

from pipeline.adapters.backend import BatchBackend, RemoteFile
from pipeline.adapters.drill import crashpoint
from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.adapters.references import GcsOpener, HashingReader, open_source
from pipeline.adapters.storage import ObjectNotFound
from pipeline.core.errors import ApiError, AuthError, StorageError, TransientApiError
from pipeline.core.values import as_utc
from pipeline.shell.context import Context

log = get_logger()
MIN_LIFE: Final = timedelta(hours=24)
"""An upload is reused for a new batch only while it has more than this to live."""
NAME_TRIES: Final = 5


@dataclass(frozen=True)
class Ready:
    """What a batch's lines send for its reference images, and the images that cannot be."""

    files: dict[str, tuple[str, str]]
    """sha256 -> (mime type, file uri)."""
    failed: dict[str, str]
    """sha256 -> why it cannot be sent."""


def gcs_opener(ctx: Context) -> GcsOpener:
    """Reads gs:// reference images through the context's stores."""

    def open_object(uri: str) -> tuple[int, BinaryIO]:
        bucket = uri.removeprefix("gs://").split("/", 1)[0]
        store = ctx.store(f"gs://{bucket}")
        reader = getattr(store, "open_reader", None)
        if reader is None:
            raise StorageError(f"cannot read {uri}: not a GCS store")
        return reader(uri)  # type: ignore[no-any-return]

    return open_object


def prepare(
    ctx: Context,
    batch: repo.BatchRow,
    run: repo.RunRow,
    keepalive: Callable[[], object] | None = None,
) -> Ready:
    """Upload (or reuse) every reference image of the batch's unsettled items; items whose
    image cannot be sent are settled `not_sent` and failed for good, naming it. `keepalive`
    is called after each image (the caller renews its leases: a thousand uploads take longer
    than one lease lives)."""
    backend = ctx.backend_for(run)
    found_sources = ctx.ledger.batch_sources(run.id, batch.id)
    shas, sources = found_sources.shas, found_sources.sources
    files: dict[str, tuple[str, str]] = {}
    failed: dict[str, str] = {}
    for sha in shas:
        source = sources.get(sha)
        if source is None:
            failed[sha] = f"reference image {sha[:12]}... has no recorded source"
            continue
        found = _ready(ctx, backend, source)
        if isinstance(found, _Problem):
            failed[sha] = str(found)
        else:
            files[sha] = (source.mime, found)
        if keepalive is not None:
            keepalive()
    if failed:
        _drop_items(ctx, batch, failed)
    return Ready(files, failed)


def _drop_items(ctx: Context, batch: repo.BatchRow, failed: dict[str, str]) -> None:
    for _reason, n in ctx.ledger.not_send(batch, failed, ctx.now()).items():
        log.error("reference_not_sent", run=batch.run_id, batch=batch.display_name, items=n)


def _ready(ctx: Context, backend: BatchBackend, source: repo.ReferenceRow) -> str:
    """The uri of a live upload of this image (reused or made now), or a _Problem saying
    why it cannot be sent."""
    uploads = ctx.ledger.uploads_of(source.sha256)
    now = ctx.now()
    for row in uploads:
        if row.state == "active" and _lives(row.expires_at, now) and row.uri:
            return row.uri
    for row in uploads:
        if row.state == "uploading":  # a kill left it: the file may be there already
            found = _finish_pending(ctx, backend, row, source)
            if found is not None:
                return found
    return _upload_new(ctx, backend, source, len(uploads))


class _Problem(str):
    """Why an image cannot be sent (a str, told apart from a uri by its type)."""


def _lives(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and as_utc(expires_at) - now > MIN_LIFE


def _finish_pending(
    ctx: Context, backend: BatchBackend, row: repo.UploadRow, source: repo.ReferenceRow
) -> str | None:
    """Adopt the file an interrupted upload made, or upload it under its recorded name; None
    when that name is spent (the file is there but too old to reuse)."""
    remote = backend.get_file(row.name)
    if remote is None:
        return _send(ctx, backend, row, source)
    if _usable(remote, ctx.now()):
        return _record(ctx, row, remote, "adopted")
    _stale(ctx, row, "found after an interrupted upload, with 24 h or less to live")
    return None


def _usable(remote: RemoteFile, now: datetime) -> bool:
    return bool(remote.uri) and remote.state in (None, "ACTIVE") and _lives(remote.expires_at, now)


def _upload_new(ctx: Context, backend: BatchBackend, source: repo.ReferenceRow, seq: int) -> str:
    for n in range(seq + 1, seq + 1 + NAME_TRIES):
        name = f"files/nb-{source.sha256[:24]}-{n:x}"
        row = ctx.ledger.upload_intent(source.sha256, name, source.mime, ctx.now())
        if row is None:  # the name is taken (an earlier upload, or another writer now)
            continue
        crashpoint("refs.intent")
        found = _send(ctx, backend, row, source)
        if found is not None:
            return found
    return _Problem(f"reference image {source.source}: no free file name to upload it as")


def _send(
    ctx: Context, backend: BatchBackend, row: repo.UploadRow, source: repo.ReferenceRow
) -> str | None:
    """Upload the image's bytes as the row's name; its uri, a _Problem, or None when the name
    is taken by a file too old to reuse."""
    try:
        _, stream = open_source(source.source, gcs_opener(ctx))
    except (OSError, ObjectNotFound) as exc:
        reason = f"reference image {source.source} cannot be read any more: {_why(exc)}"
        _stale(ctx, row, reason)
        return _Problem(reason)
    reader = HashingReader(stream)
    try:
        remote = backend.upload_image(reader, source.mime, row.name, source.sha256[:16])
    except (AuthError, TransientApiError):
        raise
    except ApiError as exc:
        if exc.code != 409:
            reason = f"reference image {source.source}: the Files API refused it: {exc}"
            _stale(ctx, row, reason)
            return _Problem(reason)
        taken = backend.get_file(row.name)  # ours from a lost answer, or an old one
        if taken is None or not _usable(taken, ctx.now()):
            _stale(ctx, row, "the name is taken by a file with 24 h or less to live")
            return None
        return _record(ctx, row, taken, "adopted")
    finally:
        reader.close()
    crashpoint("refs.uploaded")
    if reader.sha256() != source.sha256:
        reason = (
            f"reference image {source.source} changed since the run was submitted "
            f"(sha256 {reader.sha256()[:12]}..., recorded {source.sha256[:12]}...); "
            "submit the job again to send the new image"
        )
        _stale(ctx, row, reason)
        return _Problem(reason)
    return _record(ctx, row, remote, "uploaded")


def _record(ctx: Context, row: repo.UploadRow, remote: RemoteFile, how: str) -> str:
    assert remote.uri
    ctx.ledger.upload_done(row.id, remote.uri, remote.expires_at, ctx.now())
    log.info("reference_" + how, sha256=row.sha256, file=row.name, expires=str(remote.expires_at))
    return remote.uri


def _stale(ctx: Context, row: repo.UploadRow, reason: str) -> None:
    ctx.ledger.upload_stale(row.id, reason)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def mark_gone(ctx: Context, names: set[str]) -> int:
    """Uploads a results line found gone or expired: never reused again. Returns how many."""
    if not names:
        return 0
    return ctx.ledger.uploads_gone(sorted(names), "a line found the file gone or expired")
