"""The prompt cache: a queued item whose content hash (model, prompt, aspect ratio, image size,
and its seed and reference images' sha256s when it has them: `items.prompt_sha256`, see
`expand.prompt_sha256`) matches an image another run already
stored is not sent. Its image is copied into this run's output, and the item becomes
`succeeded` with `cached = true`, zero cost and no attempt row (its report says attempts 0).

Runs before batches are formed, under the scheduler lease, chunk by chunk (bounded memory).
A source object that is gone, or whose bytes no longer match the ledger, is a miss, as is a
name in this run's output already taken by different bytes: the item is then sent as usual.
`submit/run --no-cache` (runs.use_cache = false) turns the cache off for a run.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from typing import Any

from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.adapters.storage import ObjectNotFound, ObjectStore, sha256_hex
from pipeline.core import naming
from pipeline.core.errors import ObjectConflict
from pipeline.core.refimage import reference_metadata
from pipeline.shell.context import Context

log = get_logger()
CHUNK = 500


def serve_from_cache(
    ctx: Context, run: repo.RunRow, keepalive: Callable[[], object] | None = None
) -> int:
    """Serve the run's queued items from earlier runs' images; returns how many were served.

    Side effects: one object per hit in the run's output store; item and event rows.
    `keepalive` is called after each chunk (the caller renews its lease there).
    """
    if run.state != "active" or not run.use_cache:
        return 0
    served = 0
    after = 0
    while True:
        chunk = ctx.ledger.cache_chunk(run.id, after, CHUNK)
        if not chunk.rows:
            break
        after = chunk.rows[-1].id
        for row in chunk.rows:
            candidates = chunk.sources.get(row.prompt_sha256)
            if candidates and _serve_one(ctx, run, row, candidates):
                served += 1
        if keepalive is not None:
            keepalive()
    if served:
        log.info("cache_served", run=run.id, items=served)
    return served


def _serve_one(ctx: Context, run: repo.RunRow, row: Any, candidates: list[Any]) -> bool:
    found = _read_source(ctx, candidates)
    if found is None:
        log.debug("cache_miss", run=run.id, item=row.key, prompt_sha256=row.prompt_sha256)
        return False
    source, data, sha = found
    ext = source.uri.rsplit(".", 1)[-1].lower() if "." in source.uri else "png"
    content_type = mimetypes.types_map.get(f".{ext}", "application/octet-stream")
    dest = ctx.store(run.output_uri)
    try:
        stored = dest.put_once(
            naming.object_name(row.key, ext),
            data,
            content_type=content_type,
            metadata=_metadata(run, row, source),
            overwrite=run.overwrite,
            sha256=sha,
        )
    except ObjectConflict as exc:
        log.warning("cache_conflict", run=run.id, item=row.key, error=str(exc)[:200])
        return False
    detail = f"prompt cache: copied from {source.run_id}/{source.key}"
    dest.sync()
    moved = ctx.ledger.serve_cached(
        run.id, row.id, stored.uri, sha, ctx.now(), detail, source.model
    )
    if moved:
        log.info(
            "item_cached",
            run=run.id,
            batch=None,
            item=row.key,
            prompt_sha256=row.prompt_sha256,
            source_run=source.run_id,
            source_item=source.key,
            uri=stored.uri,
        )
    return moved


def _read_source(ctx: Context, candidates: list[Any]) -> tuple[Any, bytes, str] | None:
    """The first candidate whose object can still be read: (row, bytes, sha256)."""
    for source in candidates:
        try:
            data = _store_for(ctx, source.uri).read_bytes(source.uri)
        except ObjectNotFound:
            continue
        sha = sha256_hex(data)
        if source.sha256 and sha != source.sha256:
            continue  # replaced since it was recorded: not the image that was asked for
        return source, data, sha
    return None


def _store_for(ctx: Context, uri: str) -> ObjectStore:
    """A store that can read `uri` (any store of its kind reads any object of that kind)."""
    if uri.startswith("gs://"):
        bucket = uri[len("gs://") :].split("/", 1)[0]
        return ctx.store(f"gs://{bucket}")
    return ctx.store(uri.rsplit("/", 1)[0] or "/")


def _metadata(run: repo.RunRow, row: Any, source: Any) -> dict[str, str]:
    return {
        "nanobatch-run": run.id,
        "nanobatch-key": row.key,
        "nanobatch-model": source.model,  # the model that made the image, maybe a fallback
        "nanobatch-prompt-sha256": row.prompt_sha256,
        "nanobatch-input-tokens": "0",
        "nanobatch-output-image-tokens": "0",
        "nanobatch-output-text-tokens": "0",
        "nanobatch-thinking-tokens": "0",
        "nanobatch-cost-usd": "0",
        "nanobatch-cached-from": f"{source.run_id}/{source.key}",
        **reference_metadata(row.refs, row.seed),
    }
