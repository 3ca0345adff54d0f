"""Vertex batch prediction output: each input line's prediction line (the input object
echoed, `status`, `processed_time` and, on success, `response` from `answers.serve`), written
to local files and uploaded to the job's `prediction-model-{time}` folder in Cloud Storage.
Line faults (missing, error, duplicates) come from `vertex_faults`.

Batch image output on Vertex is 1K only (reference/vertex-batch.md section 5): a line that
asks for another imageSize gets an INVALID_ARGUMENT status.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.emulator import answers
from pipeline.emulator.png import png_base64
from pipeline.emulator.wire import pick

if TYPE_CHECKING:
    from pipeline.emulator.vertex import Job, VertexJobs

BATCH_SIZES = ("1K",)
STATUS_NAMES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 7: "PERMISSION_DENIED", 13: "INTERNAL"}
HTTP_OF = {3: 400, 5: 404, 7: 403, 8: 429, 13: 500, 14: 503, 4: 504}


def produce(jobs: VertexJobs, job: Job, keep: int, at: datetime) -> None:
    """Write the prediction lines of the job's first `keep` requests to its output folder."""
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}Z"
    folder = f"{job.output_prefix.rstrip('/')}/prediction-model-{stamp}"
    writer = _Writer(jobs, job, folder, at)
    try:
        served = 0
        for uri in job.inputs:
            for raw in jobs.gcs().lines(uri):
                if not raw.strip():
                    continue
                if served >= keep:
                    break
                served += 1
                writer.line(raw)
        writer.finish()
    finally:
        writer.close()
    job.output_dir = folder


class _Writer:
    """The prediction lines of one job, into `files` local files, then uploaded."""

    def __init__(self, jobs: VertexJobs, job: Job, folder: str, at: datetime) -> None:
        self.jobs, self.job, self.folder, self.at = jobs, job, folder, at
        self.faults = jobs.faults
        self.tmp = Path(tempfile.mkdtemp(prefix="vertex-", dir=jobs.state.config.data_dir))
        self.count = max(1, self.faults.files)
        self.paths = [self.tmp / self._name(i) for i in range(self.count)]
        self.out = [p.open("wb") for p in self.paths]
        self.at_end: list[bytes] = []
        self.n = 0
        self.scale = jobs.state.config.image_scale

    def _name(self, i: int) -> str:
        return "predictions.jsonl" if self.count == 1 else f"predictions_{i + 1:04d}.jsonl"

    def line(self, raw: bytes) -> None:
        """The output line(s) of one input line, into the file its position falls in."""
        obj, key, request = _decode(raw)
        dest = self.out[min(self.count - 1, self.n * self.count // max(1, self.job.requests))]
        self.n += 1
        self.job.stats["seen"] = self.job.stats.get("seen", 0) + 1
        if self.faults.is_missing(key):
            self._log(key, "missing", None)
            return
        dup = self.faults.duplicate(key)
        main = self._predict(obj, key, request)
        extras = []
        if dup is not None:
            extras = [self._extra(obj, key, request, kind, i) for i, kind in enumerate(dup.extra)]
        where = dup.where if dup is not None else "after"
        if where == "end":
            self.at_end.extend(extras)
            extras = []
        ordered = [*extras, main] if where == "before" else [main, *extras]
        for data in ordered:
            dest.write(data)

    def _predict(self, obj: dict[str, Any], key: str, request: Any) -> bytes:
        error = self.faults.line_error(key)
        if error is not None:
            self.job.stats["failed"] = self.job.stats.get("failed", 0) + 1
            self._log(key, "error", None)
            return self._encode(obj, error.status, None)
        status, response = self._serve(key, request)
        self.job.stats["ok" if not status else "failed"] = (
            self.job.stats.get("ok" if not status else "failed", 0) + 1
        )
        self._log(key, "ok" if not status else "invalid", response)
        return self._encode(obj, status, response)

    def _extra(self, obj: dict[str, Any], key: str, request: Any, kind: str, i: int) -> bytes:
        if kind == "error":
            self._log(key, "duplicate-error", None)
            status = _status_text(14, "The service is currently unavailable.")
            return self._encode(obj, status, None)
        status, response = self._serve(key, request)
        if response is not None and kind == "image":
            response = _other_image(response, f"duplicate {i + 1}\x1f{self.job.id}\x1f{key}")
        elif response is not None:
            response = _without_image(response)
        self._log(key, f"duplicate-{kind}", response)
        return self._encode(obj, status, response)

    def _serve(self, key: str, request: Any) -> tuple[str, dict[str, Any] | None]:
        size = pick(pick(pick(request, "generationConfig"), "imageConfig"), "imageSize")
        if size and size not in BATCH_SIZES:
            message = (
                f"Image size {size} is not supported in batch prediction; batch image output "
                "is limited to 1K."
            )
            return _status_text(3, message), None
        out = answers.serve(self.job.model, key, request, None, self.scale, self.job.id)
        if out is None:
            return _status_text(13, "Internal error encountered."), None
        if "error" in out:
            err = out["error"]
            return _status_text(int(err.get("code", 13)), str(err.get("message", ""))), None
        response: dict[str, Any] = out["response"]
        return "", response

    def _encode(self, obj: dict[str, Any], status: str, response: dict[str, Any] | None) -> bytes:
        line = {**obj, "status": status, "processed_time": _processed(self.at)}
        if response is not None:
            line["response"] = response
        return json.dumps(line).encode("utf-8") + b"\n"

    def _log(self, key: str, outcome: str, response: dict[str, Any] | None) -> None:
        self.jobs.state.log(
            {
                "kind": "vertex_line",
                "job": self.job.name,
                "key": key,
                "outcome": outcome,
                "usage": (response or {}).get("usageMetadata"),
            }
        )

    def finish(self) -> None:
        for data in self.at_end:
            self.out[-1].write(data)
        for fh in self.out:
            fh.close()
        gcs = self.jobs.gcs()
        for i, path in enumerate(self.paths):
            gcs.upload(f"{self.folder}/{self._name(i)}", path)

    def close(self) -> None:
        for fh in self.out:
            fh.close()
        for path in self.paths:
            path.unlink(missing_ok=True)
        self.tmp.rmdir()


def _decode(raw: bytes) -> tuple[dict[str, Any], str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return {"instance": raw.decode("utf-8", "replace").strip()}, "", None
    key = obj.get("key")
    return obj, "" if key is None else str(key), obj.get("request")


def _status_text(code: int, message: str) -> str:
    """A line's error as text (the service's format is undocumented; this one names the
    HTTP code and the gRPC status, as Google's error envelopes do)."""
    status = STATUS_NAMES.get(code, lines_status_name(code))
    body = {"error": {"code": HTTP_OF.get(code, 500), "message": message, "status": status}}
    return json.dumps(body)


def lines_status_name(code: int) -> str:
    names = {2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 8: "RESOURCE_EXHAUSTED", 14: "UNAVAILABLE"}
    return names.get(code, "INTERNAL")


def _processed(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+00:00"


def _image_parts(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for candidate in response.get("candidates") or []:
        for part in (candidate.get("content") or {}).get("parts") or []:
            if "inlineData" in part and not part.get("thought"):
                yield part


def _other_image(response: dict[str, Any], seed: str) -> dict[str, Any]:
    """The response with each final image replaced by another of the same size."""
    out = json.loads(json.dumps(response))
    for part in _image_parts(out):
        data = part["inlineData"]["data"]
        head = base64.b64decode(data[:44])
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        part["inlineData"]["data"] = png_base64(seed, width, height)
    return dict(out)


def _without_image(response: dict[str, Any]) -> dict[str, Any]:
    """The response with its images dropped (a text-only answer, still billed)."""
    out = json.loads(json.dumps(response))
    for candidate in out.get("candidates") or []:
        content = candidate.get("content") or {}
        parts = [p for p in content.get("parts") or [] if "inlineData" not in p]
        content["parts"] = parts or [{"text": "No image this time."}]
    return dict(out)
