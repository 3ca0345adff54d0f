"""Batch jobs: create (with limits), lazy state moves on the emulator clock, output generation,
cancel, delete, and the Operation JSON.

Output is produced on the request thread at the moment a batch turns SUCCEEDED: the input JSONL
is read line by line from disk and the results file is written line by line to disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.emulator import answers, lines, models, references
from pipeline.emulator.schema import Schema
from pipeline.emulator.state import FileRec, State, sha256_field
from pipeline.emulator.tokens import line_tokens, request_tokens
from pipeline.emulator.wire import (
    API,
    QUOTA_MESSAGE,
    ApiError,
    bad_request,
    batch_missing,
    injected,
    model_missing,
    new_id,
    pick,
    quota_details,
    retry_delay,
    rfc3339,
)

PENDING, RUNNING = "BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"
SUCCEEDED, FAILED = "BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED"
CANCELLED, EXPIRED = "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"
LIVE = frozenset({PENDING, RUNNING})
MAX_AGE = timedelta(hours=48)
# The create body's message and the Operation's @type names, per kind of batch.
CREATE_MESSAGE = {
    "generate": "BatchGenerateContentRequest",
    "embed": "AsyncBatchEmbedContentRequest",
}
METHOD = {"generate": "batchGenerateContent", "embed": "asyncBatchEmbedContent"}
RESOURCE = {"generate": "GenerateContentBatch", "embed": "EmbedContentBatch"}
END_ERRORS = {
    FAILED: {"code": 13, "message": "Batch failed."},
    CANCELLED: {"code": 1, "message": "Operation cancelled."},
    EXPIRED: {"code": 4, "message": "Batch expired: it did not finish within 48 hours."},
}


@dataclass
class Batch:
    """One batch job."""

    id: str
    model: str
    display_name: str
    created: datetime
    keys: list[str]
    tokens: int
    input_path: Path | None = None
    inline: list[Any] | None = None
    input_file: str | None = None
    forced: str | None = None
    state: str = PENDING
    updated: datetime | None = None
    ended: datetime | None = None
    output_file: str | None = None
    inline_out: list[dict[str, Any]] | None = None
    stats: dict[str, int] = field(default_factory=dict)
    version: str = "v1beta"
    """The API version segment of the create: type URLs in its lines' errors use it."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def kind(self) -> str:
        """ "embed" for an embedding batch, else "generate"."""
        return lines.batch_kind(self.model)


class Batches:
    """The batch store on top of the shared State."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.items: dict[str, Batch] = {}
        self.created_count = 0

    # --- create ----------------------------------------------------------------------------

    def create(
        self, model: str, body: dict[str, Any], version: str = "v1beta", kind: str = "generate"
    ) -> Batch:
        """Validate, check limits and store a new PENDING batch.

        ``kind`` is the method asked: "generate" (batchGenerateContent) or "embed"
        (asyncBatchEmbedContent); the body is parsed as that method's request message."""
        fault = self.state.get_faults().http_error("create")
        if fault is not None:
            raise injected(fault.status, fault.message)
        if models.kind(model) is None or lines.batch_kind(model) != kind:
            raise model_missing(model, version, METHOD[kind])
        found = Schema.load().validate(CREATE_MESSAGE[kind], body, version=version)
        if found:
            raise bad_request(found)
        batch = self._new_batch(model, pick(body, "batch") or {})
        batch.version = version
        self.refresh_all()
        with self.state.lock:
            self._check_limits(batch)
            self.created_count += 1
            batch.forced = self.state.get_faults().batch_fault(
                batch.display_name or batch.id, self.created_count
            )
            self.items[batch.id] = batch
        return batch

    def _new_batch(self, model: str, spec: Any) -> Batch:
        config = pick(spec, "inputConfig")
        name = pick(config, "fileName")
        requests = pick(pick(config, "requests"), "requests")
        bid = new_id(36)
        display = str(pick(spec, "displayName", default="") or "")
        now = self.state.clock.now()
        if isinstance(name, str) and name:
            path, keys, tokens = self._copy_input(bid, model, name.removeprefix("files/"))
            return Batch(bid, model, display, now, keys, tokens, input_path=path, input_file=name)
        if isinstance(requests, dict):
            requests = [requests]  # proto JSON: one object for a repeated field is a list of one
        if isinstance(requests, list) and requests:
            keys = [_inline_key(r, i) for i, r in enumerate(requests)]
            tokens = sum(request_tokens(model, pick(r, "request")) for r in requests)
            return Batch(bid, model, display, now, keys, tokens, inline=requests)
        raise ApiError(400, "* GenerateContentBatch.input_config: input_config is required.")

    def _copy_input(self, bid: str, model: str, file_id: str) -> tuple[Path, list[str], int]:
        rec = self.state.live_file(file_id)
        path = self.state.config.data_dir / "batches" / f"{bid}.input.jsonl"
        try:
            os.link(rec.path, path)
        except OSError:
            shutil.copyfile(rec.path, path)
        with path.open("rb") as f:
            keys, tokens = _count_input(model, f)
        return path, keys, tokens

    def _check_limits(self, batch: Batch) -> None:
        live = [b for b in self.items.values() if b.state in LIVE]
        if len(live) >= self.state.config.max_live_batches:
            delay = self._retry_after(live)
            raise ApiError(
                429,
                "You have reached the maximum number of concurrent batch jobs "
                f"({self.state.config.max_live_batches}). " + QUOTA_MESSAGE,
                quota_details("concurrent_batches", None, delay),
            )
        same_model = [b for b in live if b.model == batch.model]
        enqueued = sum(b.tokens for b in same_model)
        quota = self.state.config.quota(batch.model)
        if enqueued + batch.tokens > quota:
            delay = self._retry_after(same_model)
            raise ApiError(
                429, QUOTA_MESSAGE, quota_details("enqueued_tokens", (batch.model, quota), delay)
            )

    def _retry_after(self, live: list[Batch]) -> str:
        """RetryInfo.retryDelay: wall seconds until the first of ``live`` ends (at least 1 s)."""
        cfg = self.state.config
        now = self.state.clock.now()
        run = timedelta(seconds=cfg.pending_seconds + cfg.running_seconds)
        ends = [min(b.created + run, b.created + MAX_AGE) for b in live]
        wait = min(((e - now).total_seconds() for e in ends), default=0.0)
        return retry_delay(wait / self.state.clock.speed)

    # --- lookup and lifecycle --------------------------------------------------------------

    def get(self, bid: str) -> Batch:
        """The batch, refreshed (404 when unknown or deleted)."""
        with self.state.lock:
            batch = self.items.get(bid)
        if batch is None:
            raise batch_missing(bid)
        self.refresh(batch)
        return batch

    def listing(self) -> list[Batch]:
        """All batches, refreshed, newest first."""
        self.refresh_all()
        with self.state.lock:
            return sorted(self.items.values(), key=lambda b: b.created, reverse=True)

    def refresh_all(self) -> None:
        """Move every batch to its current state."""
        with self.state.lock:
            batches = list(self.items.values())
        for batch in batches:
            self.refresh(batch)

    def refresh(self, batch: Batch) -> None:
        """Compute the state from the clock; produce the output at the end."""
        with batch.lock:
            if batch.state not in LIVE:
                return
            cfg = self.state.config
            start = batch.created + timedelta(seconds=cfg.pending_seconds)
            end = start + timedelta(seconds=cfg.running_seconds)
            deadline = batch.created + MAX_AGE
            now = self.state.clock.now()
            if now < min(start, deadline):
                return
            if now < min(end, deadline):
                batch.state, batch.updated = RUNNING, start
                return
            final = EXPIRED if end > deadline else batch.forced or SUCCEEDED
            if final == SUCCEEDED:
                self._produce(batch)
            batch.state, batch.updated, batch.ended = final, min(end, deadline), min(end, deadline)

    def cancel(self, bid: str) -> None:
        """Cancel a live batch (no output); a finished one is left as it is."""
        batch = self.get(bid)
        with batch.lock:
            if batch.state in LIVE:
                now = self.state.clock.now()
                batch.state, batch.updated, batch.ended = CANCELLED, now, now

    def delete(self, bid: str) -> None:
        """Remove a batch from the store."""
        batch = self.get(bid)
        with self.state.lock:
            self.items.pop(batch.id, None)
        if batch.input_path is not None:
            batch.input_path.unlink(missing_ok=True)

    # --- output ----------------------------------------------------------------------------

    def _produce(self, batch: Batch) -> None:
        if batch.inline is not None:
            self._produce_inline(batch)
        else:
            self._produce_file(batch)

    def _serve(
        self, batch: Batch, key: str, request: Any, err: str | None
    ) -> dict[str, Any] | None:
        faults = self.state.get_faults()
        fault = faults.line_fault(key)
        if err is not None and (fault is None or fault.kind not in ("missing", "error")):
            out: dict[str, Any] | None = {"error": {"code": 3, "message": err}}
        else:
            out = answers.serve(
                batch.model,
                key,
                request,
                fault,
                self.state.config.image_scale,
                batch.id,
                version=batch.version,
                checked=True,  # the line (file) or the create body (inline) was checked
                files=self._files_at(batch),
                refs=references.image_salt(request, self._reference_files(batch)),
            )
        outcome = "missing" if out is None else fault.kind if fault else "ok"
        if out is not None and fault is None and "error" in out:
            outcome = "invalid"
        self.state.log(
            {"kind": "line", "key": key, "batch": f"batches/{batch.id}", "outcome": outcome}
        )
        if out is not None:
            name = "failedRequestCount" if "error" in out else "successfulRequestCount"
            batch.stats[name] = batch.stats.get(name, 0) + 1
        return out

    def _files_at(self, batch: Batch) -> lines.FileCheck:
        """Which files a line may name: those live when the batch started running (its output is
        made lazily, maybe much later, but the service reads the files as it runs)."""
        when = batch.created + timedelta(seconds=self.state.config.pending_seconds)
        return lambda file_id: self.state.file_live_at(file_id, when)

    def _reference_files(self, batch: Batch) -> references.Lookup:
        """The files a batch's lines may name: those live when it started running."""
        when = batch.created + timedelta(seconds=self.state.config.pending_seconds)
        return references.files_at(self.state, when)

    def _produce_inline(self, batch: Batch) -> None:
        results: list[dict[str, Any]] = []
        for i, entry in enumerate(batch.inline or []):
            key = batch.keys[i]
            out = self._serve(batch, key, pick(entry, "request"), None)
            if out is not None:
                meta = pick(entry, "metadata")
                results.append(out | ({"metadata": meta} if isinstance(meta, dict) else {}))
        faults = self.state.get_faults()
        if faults.shuffle:
            _out_of_order(results, faults.seed, batch.id)
        batch.inline_out = results

    def _produce_file(self, batch: Batch) -> None:
        assert batch.input_path is not None
        data_dir = self.state.config.data_dir
        tmp = data_dir / "batches" / f"{batch.id}.out.tmp"
        offsets: list[tuple[int, int]] = []
        with batch.input_path.open("rb") as src, tmp.open("wb") as dst:
            for i, raw in enumerate(_nonblank(src)):
                key, request, err = lines.read_line(raw, batch.kind, batch.version)
                out = self._serve(batch, batch.keys[i], request, err)
                if out is None:
                    continue
                line = json.dumps({"key": key, **out} if key is not None else out)
                data = line.encode("utf-8") + b"\n"
                offsets.append((dst.tell(), len(data)))
                dst.write(data)
        final = data_dir / "files" / f"batch-{batch.id}"
        digest = self._finalize_output(batch, tmp, final, offsets)
        size = final.stat().st_size
        rec = FileRec(
            id=f"batch-{batch.id}",
            mime="application/jsonl",
            size=size,
            created=self.state.clock.now(),
            path=final,
            source="GENERATED",
            sha256=digest,
        )
        self.state.add_file(rec)
        batch.output_file = f"files/{rec.id}"

    def _finalize_output(
        self, batch: Batch, tmp: Path, final: Path, offsets: list[tuple[int, int]]
    ) -> str:
        """Move (or, with the shuffle fault, reorder) the results; return the sha256Hash."""
        faults = self.state.get_faults()
        hasher = hashlib.sha256()
        if faults.shuffle:
            _out_of_order(offsets, faults.seed, batch.id)
        with tmp.open("rb") as src, final.open("wb") as dst:
            for off, length in offsets:
                src.seek(off)
                data = src.read(length)
                hasher.update(data)
                dst.write(data)
        tmp.unlink()
        return sha256_field(hasher.hexdigest())

    # --- JSON ------------------------------------------------------------------------------

    def operation(self, batch: Batch, listing: bool = False) -> dict[str, Any]:
        """The Operation JSON of a batch (list items leave out inline output)."""
        name = f"batches/{batch.id}"
        meta: dict[str, Any] = {
            "@type": f"{API}.{RESOURCE[batch.kind]}",
            "model": f"models/{batch.model}",
        }
        if batch.display_name:
            meta["displayName"] = batch.display_name
        if batch.input_file:
            meta["inputConfig"] = {"fileName": batch.input_file}
        output = self._output(batch, listing)
        if output:
            meta["output"] = output
        meta["createTime"] = rfc3339(batch.created)
        meta["updateTime"] = rfc3339(batch.updated or batch.created)
        if batch.ended is not None:
            meta["endTime"] = rfc3339(batch.ended)
        meta |= {"batchStats": self._stats(batch), "state": batch.state, "name": name}
        op: dict[str, Any] = {"name": name, "metadata": meta}
        if batch.state not in LIVE:
            op["done"] = True
            if batch.state == SUCCEEDED:
                kind = f"{API}.{RESOURCE[batch.kind]}Output"
                op["response"] = {"@type": kind, **(output or {})}
            else:
                op["error"] = END_ERRORS[batch.state]
        return op

    def _output(self, batch: Batch, listing: bool) -> dict[str, Any]:
        if batch.state != SUCCEEDED:
            return {}
        if batch.output_file:
            return {"responsesFile": batch.output_file}
        if listing:
            return {}
        return {"inlinedResponses": {"inlinedResponses": batch.inline_out or []}}

    def _stats(self, batch: Batch) -> dict[str, str]:
        counts = {"requestCount": len(batch.keys)}
        if batch.state in LIVE:
            counts["pendingRequestCount"] = len(batch.keys)
        else:
            counts |= batch.stats
        return {k: str(v) for k, v in counts.items() if v}


def _nonblank(f: Any) -> Any:
    """The non-blank lines of a binary file, read one at a time."""
    for raw in f:
        if raw.strip():
            yield raw


def _count_input(model: str, f: Any) -> tuple[list[str], int]:
    """The keys (``line-<i>`` for a line without one) and the enqueued-token total of an input
    JSONL file, read one line at a time (a million lines must not cost seconds: see
    `tokens.line_tokens`)."""
    keys: list[str] = []
    tokens = 0
    for i, raw in enumerate(_nonblank(f)):
        key, n = line_tokens(model, raw)
        keys.append(key if key is not None else f"line-{i}")
        tokens += n
    return keys, tokens


def _inline_key(entry: Any, index: int) -> str:
    key = pick(pick(entry, "metadata"), "key")
    return str(key) if key is not None else str(index)


def _out_of_order(items: list[Any], seed: int, batch_id: str) -> None:
    """The shuffle fault: reorder `items` in place, seeded per batch, never leaving them in
    the order they came (a shuffle that happens to be the identity, one time in 120 for five
    lines, would inject no fault)."""
    if len(items) < 2:
        return
    before = list(items)
    random.Random(f"{seed}:{batch_id}").shuffle(items)
    if items == before:
        items.append(items.pop(0))
