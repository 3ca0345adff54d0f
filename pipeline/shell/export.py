"""Datasets out (CONTRACT section 12): `export RUN --format imagefolder|webdataset --out PATH`.

Owns turning a run's succeeded images into a dataset in a folder or under gs://:

- imagefolder: the images under their stored names plus `metadata.jsonl` (one JSON object
  per image: `file_name`, key, prompt, aspect ratio, size, model, seed, references, tokens,
  cost), the layout `datasets.load_dataset("imagefolder", data_dir=...)` reads as it is.
  Images are written create-once (identical bytes adopted); `metadata.jsonl` is written
  last, after the images are durable, so its presence means the export is whole.
- webdataset: tar shards `<job>-000000.tar`, ... of `<name>.<ext>` + `<name>.json` pairs,
  each shard at most `max_bytes` and `max_samples` (a sample larger than the byte limit
  gets a shard of its own). A shard is written whole to a local staging file, then stored
  create-only under its final name (`ObjectStore.put_file_once`), so an interrupted export
  leaves no partial shard under a final name.

Deterministic: items in ledger id (input row) order, tar headers with fixed mtime, owner and
mode, JSON with a fixed key order, so running the export again (after an interruption, or
over a finished export) gives byte-identical files, and a rerun adopts what is there.
Streamed: items come from the ledger in keyset pages and images pass one at a time through
the run's store, so memory stays flat for any run size. An image that is gone or whose
bytes no longer match the ledger is skipped with a warning and counted.

Nothing here imports `datasets` or `webdataset`: the formats are plain files.
"""

from __future__ import annotations

import io
import json
import mimetypes
import os
import shutil
import socket
import tarfile
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pipeline.adapters.drill import crashpoint
from pipeline.adapters.log import get_logger
from pipeline.adapters.storage import ObjectNotFound, ObjectStore, sha256_hex
from pipeline.core.errors import ObjectConflict, StorageError, UsageError
from pipeline.core.values import nanos_to_usd
from pipeline.shell.context import Context

log = get_logger()

FORMATS = ("imagefolder", "webdataset")
DEFAULT_SHARD_BYTES = 1_000_000_000
"""At most 1 GB (10^9 bytes) per tar shard by default."""
DEFAULT_SHARD_SAMPLES = 10_000
PAGE = 500
"""Items read from the ledger per page."""
METADATA_NAME = "metadata.jsonl"
TAR_CONTENT_TYPE = "application/x-tar"
JSONL_CONTENT_TYPE = "application/jsonl"

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_TAR_FORMAT: Final = tarfile.PAX_FORMAT  # long and non-ASCII names, read by any tar reader
_HOST = socket.gethostname().replace(".", "-")


@dataclass(frozen=True)
class Sample:
    """One succeeded image to export: where it is, and its metadata record."""

    key: str
    uri: str
    sha256: str | None
    file_name: str
    record: dict[str, Any]


@dataclass
class ExportResult:
    """What an export wrote: image count, skipped keys, and the files (names under --out)."""

    fmt: str
    out: str
    images: int = 0
    skipped: int = 0
    skipped_keys: list[str] = field(default_factory=list)
    """The first few skipped keys, for the summary line (the log has every one)."""
    files: list[str] = field(default_factory=list)

    def skip(self, key: str) -> None:
        self.skipped += 1
        if len(self.skipped_keys) < 5:
            self.skipped_keys.append(key)

    def summary(self) -> str:
        """One line for stderr."""
        what = f"exported {self.images} images as {self.fmt} to {self.out}"
        if self.fmt == "webdataset":
            n = len(self.files)
            span = f"{self.files[0]} .. {self.files[-1]}" if n > 1 else "".join(self.files)
            what += f": {n} shard{'s' if n != 1 else ''}" + (f" ({span})" if n else "")
        if self.skipped:
            shown = ", ".join(self.skipped_keys) + (", ..." if self.skipped > 5 else "")
            what += (
                f"; skipped {self.skipped} whose image is gone or changed ({shown}); see the log"
            )
        return what


# ── the pure part: records, names and tar sizes ───────────────────────────────


def sample_record(item: Any, sums: Mapping[str, Any], file_name: str) -> dict[str, Any]:
    """The metadata of one image, in a fixed key order (imagefolder line, webdataset json)."""
    return {
        "file_name": file_name,
        "key": item.key,
        "prompt": item.prompt,
        "aspect_ratio": item.aspect_ratio,
        "image_size": item.image_size,
        "model": sums.get("served_by") or item.model,
        "seed": _seed(item),
        "references": _references(item),
        "input_tokens": int(sums["input_tokens"]),
        "output_image_tokens": int(sums["output_image_tokens"]),
        "output_text_tokens": int(sums["output_text_tokens"]),
        "thinking_tokens": int(sums["thinking_tokens"]),
        "cost_usd": nanos_to_usd(int(sums["cost_nanos"])),
        "attempts": int(sums["attempts"]),
        "cached": bool(item.cached),
        "sha256": item.sha256,
        "run": item.run_id,
    }


def _seed(item: Any) -> int | None:
    """The item's seed once variants exist (CONTRACT section 9); null until then."""
    seed = getattr(item, "seed", None)
    return int(seed) if seed is not None else None


def _references(item: Any) -> list[str]:
    """The sha256s of the item's reference images in order; [] until they exist. Read as a
    JSON list or a comma-separated string, whichever the ledger keeps."""
    value = getattr(item, "references", None)
    if not value:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return [part for part in text.split(",") if part]


def wds_stem(stem: str, key: str) -> str:
    """A sample name for WebDataset, which splits a file name at its FIRST dot into sample
    key and extension: the stored stem when it has no dot, else the dots made `_` plus the
    first 12 hex digits of sha256(key), so two keys never share a sample."""
    if "." not in stem:
        return stem
    return f"{stem.replace('.', '_')}-{sha256_hex(key.encode('utf-8', 'surrogatepass'))[:12]}"


def tar_info(name: str, size: int) -> tarfile.TarInfo:
    """A regular-file header with nothing in it that changes between runs."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def member_bytes(info: tarfile.TarInfo) -> int:
    """Bytes a member takes in the archive: its header(s) plus its data padded to a block."""
    header = len(info.tobuf(_TAR_FORMAT, "utf-8", "surrogateescape"))
    return header + -(-info.size // _BLOCK) * _BLOCK


def closed_size(offset: int) -> int:
    """The archive's size once closed at `offset`: two zero blocks, padded to a record."""
    return -(-(offset + 2 * _BLOCK) // _RECORD) * _RECORD


def shard_name(job: str, index: int) -> str:
    return f"{job}-{index:06d}.tar"


# ── reading the run ─────────────────────────────────────────────────────────────


def _samples(ctx: Context, run_id: str, fmt: str) -> Iterator[Sample]:
    """The run's succeeded items in id order, a page of the ledger at a time."""
    after = 0
    while True:
        page = ctx.ledger.succeeded_page(run_id, after, PAGE)
        if not page:
            return
        for entry in page:
            item = entry["item"]
            stored = item.uri.rstrip("/").rsplit("/", 1)[-1]
            if fmt == "webdataset":
                stem, _, ext = stored.rpartition(".")
                stored = f"{wds_stem(stem, item.key)}.{ext}"
            yield Sample(
                key=item.key,
                uri=item.uri,
                sha256=item.sha256,
                file_name=stored,
                record=sample_record(item, entry, stored),
            )
        after = page[-1]["item"].id


def _read(source: ObjectStore, sample: Sample, result: ExportResult) -> bytes | None:
    """The image's bytes, or None (counted as skipped) when gone or changed."""
    try:
        data = source.read_bytes(sample.uri)
    except ObjectNotFound:
        log.warning("export_image_missing", key=sample.key, uri=sample.uri)
        result.skip(sample.key)
        return None
    if sample.sha256 and sha256_hex(data) != sample.sha256:
        log.warning("export_image_changed", key=sample.key, uri=sample.uri)
        result.skip(sample.key)
        return None
    return data


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@contextmanager
def _never_replace(target: ObjectStore, name: str) -> Iterator[None]:
    """An export's own words for a name taken by other bytes (no `overwrite` here)."""
    try:
        yield
    except ObjectConflict as exc:
        raise ObjectConflict(
            f"{target.uri_for(name)} already exists with other bytes; an export never replaces "
            "them: export to an empty folder or prefix, or remove it"
        ) from exc


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


# ── writing ──────────────────────────────────────────────────────────────────


def export_run(
    ctx: Context,
    run_ref: str,
    fmt: str,
    out: str,
    *,
    max_bytes: int = DEFAULT_SHARD_BYTES,
    max_samples: int = DEFAULT_SHARD_SAMPLES,
) -> ExportResult:
    """Export a run's succeeded images to `out` (a folder or gs://) as `fmt`."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if max_bytes < 1 or max_samples < 1:
        raise UsageError("--shard-max-bytes and --shard-max-samples must be at least 1")
    run = ctx.ledger.get_run(run_ref)
    target = _open_target(ctx, out)
    source = ctx.store(run.output_uri)
    result = ExportResult(fmt=fmt, out=target.base_uri)
    with _staging(ctx) as staging:
        if fmt == "imagefolder":
            _imagefolder(ctx, run.id, source, target, staging, result)
        else:
            writer = ShardWriter(target, run.job, staging, max_bytes, max_samples)
            _webdataset(ctx, run.id, source, writer, result)
    log.info("export_done", run=run.id, format=fmt, out=target.base_uri, images=result.images)
    return result


def _open_target(ctx: Context, out: str) -> ObjectStore:
    """The store for --out, proven writable; a file in the way is bad usage (exit 2)."""
    if not out.startswith("gs://"):
        from pipeline.adapters.storage.local import path_from_uri

        path = path_from_uri(out)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {path} is a file; give a folder (new or existing) or gs://")
    target = ctx.store(out)
    try:
        target.check_writable()
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError):
            raise StorageError(
                f"cannot write the export to {target.base_uri}: {cause.strerror or cause}; "
                "choose another --out or fix its permissions"
            ) from exc
        raise
    return target


def _imagefolder(
    ctx: Context,
    run_id: str,
    source: ObjectStore,
    target: ObjectStore,
    staging: Path,
    result: ExportResult,
) -> None:
    metadata = staging / METADATA_NAME
    with metadata.open("w", encoding="utf-8", newline="\n") as lines:
        for sample in _samples(ctx, run_id, "imagefolder"):
            data = _read(source, sample, result)
            if data is None:
                continue
            with _never_replace(target, sample.file_name):
                target.put_once(
                    sample.file_name,
                    data,
                    content_type=_content_type(sample.file_name),
                    metadata={"nanobatch-run": run_id, "nanobatch-key": sample.key},
                    sha256=sample.sha256,
                )
            lines.write(_json_line(sample.record) + "\n")
            result.images += 1
            crashpoint("export.sample")
    target.sync()  # the images are durable before the file that says the export is whole
    target.put_file(METADATA_NAME, metadata, content_type=JSONL_CONTENT_TYPE)
    result.files.append(METADATA_NAME)


def _webdataset(
    ctx: Context, run_id: str, source: ObjectStore, writer: ShardWriter, result: ExportResult
) -> None:
    try:
        for sample in _samples(ctx, run_id, "webdataset"):
            data = _read(source, sample, result)
            if data is None:
                continue
            stem, _, ext = sample.file_name.rpartition(".")
            meta = (_json_line(sample.record) + "\n").encode("utf-8")
            writer.add(stem, [(ext, data), ("json", meta)])
            result.images += 1
            crashpoint("export.sample")
        writer.close()
    finally:
        writer.discard()
    result.files = writer.stored


class ShardWriter:
    """Tar shards of samples, each staged locally and stored create-only when full."""

    def __init__(
        self, target: ObjectStore, job: str, staging: Path, max_bytes: int, max_samples: int
    ) -> None:
        self.target = target
        self.job = job
        self.staging = staging
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.stored: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None
        self._count = 0

    def add(self, stem: str, parts: list[tuple[str, bytes]]) -> None:
        """Add one sample (its files in order); start a new shard first if it would not fit."""
        infos = [tar_info(f"{stem}.{ext}", len(data)) for ext, data in parts]
        need = sum(member_bytes(info) for info in infos)
        if self._tar is not None and self._count and self._full(need):
            self._finish()
        tar = self._tar or self._open()
        for info, (_, data) in zip(infos, parts, strict=True):
            tar.addfile(info, io.BytesIO(data))
        self._count += 1

    def close(self) -> None:
        """Store the last shard (if it has any sample)."""
        if self._tar is not None:
            self._finish()

    def discard(self) -> None:
        """Drop an unfinished staging shard (an error stopped the export)."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    def _full(self, need: int) -> bool:
        assert self._tar is not None
        too_many = self._count >= self.max_samples
        return too_many or closed_size(self._tar.offset + need) > self.max_bytes

    def _open(self) -> tarfile.TarFile:
        self._path = self.staging / shard_name(self.job, len(self.stored))
        # Kept open across add() calls and closed in _finish or discard.
        self._tar = tarfile.open(  # noqa: SIM115
            self._path, "w", format=_TAR_FORMAT, encoding="utf-8"
        )
        self._count = 0
        return self._tar

    def _finish(self) -> None:
        assert self._tar is not None and self._path is not None
        self._tar.close()
        self._tar = None
        name = self._path.name
        crashpoint("export.shard_staged")
        with _never_replace(self.target, name):
            self.target.put_file_once(
                name,
                self._path,
                content_type=TAR_CONTENT_TYPE,
                metadata={"nanobatch-job": self.job},
            )
        self._path.unlink(missing_ok=True)
        self._path = None
        self.stored.append(name)


# ── staging ──────────────────────────────────────────────────────────────────


class _staging:
    """A private staging folder under the state dir, removed on the way out. A folder left
    by a killed export of this host is swept by the next export."""

    def __init__(self, ctx: Context) -> None:
        self.root = ctx.settings.state_dir / "export"

    def __enter__(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        _sweep_dead(self.root)
        self.path = Path(
            tempfile.mkdtemp(prefix=f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.", dir=self.root)
        )
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _sweep_dead(root: Path) -> None:
    for folder in root.glob(f"{_HOST}.*"):
        pid = folder.name.split(".")[1] if folder.name.count(".") >= 2 else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
