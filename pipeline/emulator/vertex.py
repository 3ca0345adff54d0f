"""Vertex AI batch prediction, as google-genai uses it in Vertex mode: the
`/{v1,v1beta1}/projects/{p}/locations/{l}/batchPredictionJobs` routes (create, get, list,
cancel, delete), with request files read from and predictions written to Cloud Storage
through a GCS emulator (STORAGE_EMULATOR_HOST, e.g. fake-gcs-server).

A job moves PENDING, RUNNING and a final state on the emulator's clock. At its end the
input JSONL is read line by line from GCS and each line becomes one prediction line: the
input object (key and request, echoed) plus `status` ("" on success, the error otherwise),
`processed_time` and, on success, `response` (a GenerateContentResponse with a real PNG and
usageMetadata, from `answers.serve`). The lines are written to a local file and uploaded to
`{outputUriPrefix}/prediction-model-{time}/predictions.jsonl`; the job's
`outputInfo.gcsOutputDirectory` names that folder. Faults: `vertex_faults`.

Batch image output on Vertex is 1K only (reference/vertex-batch.md section 5): a line that
asks for another imageSize gets an INVALID_ARGUMENT status.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.emulator import answers, models
from pipeline.emulator.png import png_base64
from pipeline.emulator.state import State
from pipeline.emulator.vertex_faults import JobFault, VertexFaults
from pipeline.emulator.wire import ApiError, pick, rfc3339

PENDING, RUNNING = "JOB_STATE_PENDING", "JOB_STATE_RUNNING"
SUCCEEDED, PARTIAL = "JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"
FAILED, EXPIRED = "JOB_STATE_FAILED", "JOB_STATE_EXPIRED"
CANCELLING, CANCELLED = "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED"
LIVE = frozenset({PENDING, RUNNING, CANCELLING})
QUEUE_LIMIT = timedelta(hours=72)
MAX_REQUESTS = 200_000
MAX_INPUT_BYTES = 1_000_000_000
BATCH_SIZES = ("1K",)
FIRST_ID = 1_000_000_001
END_ERRORS = {
    FAILED: {"code": 13, "message": "Internal error occurred. Some rows were not processed."},
    CANCELLED: {"code": 1, "message": "CANCELED"},
    EXPIRED: {"code": 4, "message": "The job did not start within 72 hours and expired."},
}
UNAUTHENTICATED = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential."
)
STATUS_NAMES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 7: "PERMISSION_DENIED", 13: "INTERNAL"}
HTTP_OF = {3: 400, 5: 404, 7: 403, 8: 429, 13: 500, 14: 503, 4: 504}
LOST = object()
"""What `serve` returns when the answer is to be lost: the handler closes the connection."""


# ── routing ──────────────────────────────────────────────────────────────────


def match(method: str, rest: list[str]) -> tuple[str, list[str]] | None:
    """("vertex", [op, project, location, job id]) for a batch prediction route, else None."""
    if len(rest) < 5 or rest[0] != "projects" or rest[2] != "locations":
        return None
    project, location, tail = rest[1], rest[3], rest[4:]
    if tail == ["batchPredictionJobs"]:
        op = {"POST": "create", "GET": "list"}.get(method)
        return ("vertex", [op, project, location, ""]) if op else None
    if len(tail) == 2 and tail[0] == "batchPredictionJobs":
        job_id, _, verb = tail[1].partition(":")
        ops = {("GET", ""): "get", ("DELETE", ""): "delete", ("POST", "cancel"): "cancel"}
        op = ops.get((method, verb))
        return ("vertex", [op, project, location, job_id]) if op else None
    return None


def check_auth(authorization: str | None) -> None:
    """A Bearer token is required (any value: the emulator checks no credentials)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, UNAUTHENTICATED)


# ── Cloud Storage through the GCS emulator's JSON API ───────────────────────


class Gcs:
    """Just enough of the GCS JSON API: object metadata, streamed reads and uploads."""

    def __init__(self, host: str) -> None:
        url = host if "://" in host else f"http://{host}"
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    @staticmethod
    def _path(bucket: str, name: str) -> str:
        return f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/" + urllib.parse.quote(
            name, safe=""
        )

    def size(self, uri: str) -> int | None:
        """The object's size, or None when it does not exist."""
        bucket, name = split_gs(uri)
        conn = self._conn()
        try:
            conn.request("GET", self._path(bucket, name))
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status != 200:
            raise OSError(f"GCS {response.status} reading {uri}: {body[:200]!r}")
        return int(json.loads(body).get("size", 0))

    def lines(self, uri: str) -> Iterator[bytes]:
        """The object's lines, streamed."""
        bucket, name = split_gs(uri)
        conn = self._conn()
        try:
            conn.request("GET", self._path(bucket, name) + "?alt=media")
            response = conn.getresponse()
            if response.status != 200:
                raise OSError(f"GCS {response.status} reading {uri}")
            while raw := response.readline():
                yield raw
        finally:
            conn.close()

    def upload(self, uri: str, path: Path) -> None:
        """Upload a local file to `uri` (a simple media upload, streamed from disk)."""
        bucket, name = split_gs(uri)
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        conn = self._conn()
        try:
            with path.open("rb") as body:
                conn.request(
                    "POST",
                    f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}",
                    body=body,
                    headers={
                        "Content-Type": "application/jsonl",
                        "Content-Length": str(path.stat().st_size),
                    },
                )
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise OSError(f"GCS {response.status} writing {uri}: {text[:200]!r}")


def split_gs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name


# ── jobs ─────────────────────────────────────────────────────────────────────


@dataclass
class Job:
    id: str
    project: str
    location: str
    body: dict[str, Any]
    model: str
    display_name: str
    inputs: list[str]
    output_prefix: str
    created: datetime
    requests: int
    fault: JobFault | None = None
    state: str = PENDING
    updated: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    cancel_at: datetime | None = None
    output_dir: str | None = None
    stats: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{self.id}"


class VertexJobs:
    """The batch prediction job store on top of the emulator's shared State."""

    def __init__(self, state: State, storage_host: str | None = None) -> None:
        self.state = state
        self.storage_host = storage_host
        self.jobs: dict[str, Job] = {}
        self._next = FIRST_ID
        self._ops = 0

    @property
    def faults(self) -> VertexFaults:
        found: VertexFaults = self.state.get_faults().vertex
        return found

    def gcs(self) -> Gcs:
        host = self.storage_host or os.environ.get("STORAGE_EMULATOR_HOST")
        if not host:
            raise ApiError(
                400,
                "The emulator reads batch prediction input from Cloud Storage through a GCS "
                "emulator: set STORAGE_EMULATOR_HOST (e.g. fake-gcs-server).",
            )
        return Gcs(host)

    # --- create ---------------------------------------------------------------------------

    def create(self, project: str, location: str, body: dict[str, Any]) -> tuple[Job, bool]:
        """Validate and store a PENDING job; (job, whether its answer is to be lost)."""
        fault = self.faults.create_error()
        if fault is not None:
            raise ApiError(fault.status, fault.message or _default_message(fault.status))
        model = _model(project, location, pick(body, "model"))
        inputs, prefix = _io(body)
        display = str(pick(body, "displayName") or "")
        if not display:
            raise ApiError(400, "BatchPredictionJob.display_name is required.")
        requests = self._count(inputs)
        now = self.state.clock.now()
        with self.state.lock:
            job_id = str(self._next)
            self._next += 1
            job = Job(
                job_id, project, location, body, model, display, inputs, prefix, now, requests
            )
            job.fault = self.faults.job_fault(display)
            self.jobs[job_id] = job
        return job, self.faults.lose_create()

    def _count(self, inputs: list[str]) -> int:
        gcs = self.gcs()
        total = 0
        for uri in inputs:
            size = gcs.size(uri)
            if size is None:
                raise ApiError(400, f"Failed to read the input file {uri}: it does not exist.")
            if size > MAX_INPUT_BYTES:
                raise ApiError(400, f"The input file {uri} is larger than 1 GB.")
            total += sum(1 for raw in gcs.lines(uri) if raw.strip())
        if total > MAX_REQUESTS:
            raise ApiError(
                400, f"The batch has {total} requests; a batch job may hold at most 200000."
            )
        return total

    # --- lookup and lifecycle -------------------------------------------------------------

    def get(self, project: str, location: str, job_id: str) -> Job:
        with self.state.lock:
            job = self.jobs.get(job_id)
        if job is None or (job.project, job.location) != (project, location):
            raise ApiError(
                404,
                f'The BatchPredictionJob does not exist: "projects/{project}/locations/'
                f'{location}/batchPredictionJobs/{job_id}".',
            )
        self.refresh(job)
        return job

    def listing(self, project: str, location: str) -> list[Job]:
        with self.state.lock:
            found = [
                j for j in self.jobs.values() if (j.project, j.location) == (project, location)
            ]
        for job in found:
            self.refresh(job)
        return sorted(found, key=lambda j: int(j.id), reverse=True)

    def cancel(self, project: str, location: str, job_id: str) -> None:
        job = self.get(project, location, job_id)
        with job.lock:
            if job.state in (PENDING, RUNNING):
                job.state, job.updated = CANCELLING, self.state.clock.now()
                job.cancel_at = job.updated

    def delete(self, project: str, location: str, job_id: str) -> dict[str, Any]:
        job = self.get(project, location, job_id)
        with self.state.lock:
            self.jobs.pop(job.id, None)
            self._ops += 1
            op = self._ops
        return {"name": f"projects/{project}/locations/{location}/operations/{op}", "done": True}

    def refresh(self, job: Job) -> None:
        """Move the job to its state on the clock; write its output when it ends."""
        with job.lock:
            if job.state not in LIVE:
                return
            cfg = self.state.config
            now = self.state.clock.now()
            start = job.created + timedelta(seconds=cfg.pending_seconds)
            end = start + timedelta(seconds=cfg.running_seconds)
            if job.state == CANCELLING:
                self._cancelled(job, start, now)
                return
            expires = job.fault is not None and job.fault.state == EXPIRED
            if now < start and now < job.created + QUEUE_LIMIT:
                return
            if expires or now >= job.created + QUEUE_LIMIT:
                self._end(job, EXPIRED, job.fault.kept(job.requests) if job.fault else 0, now)
                return
            job.started = job.started or start
            if now < end:
                job.state, job.updated = RUNNING, start
                return
            final = job.fault.state if job.fault is not None else SUCCEEDED
            keep = job.fault.kept(job.requests) if job.fault is not None else job.requests
            self._end(job, final, keep, end)

    def _cancelled(self, job: Job, start: datetime, now: datetime) -> None:
        """Completed rows are exported when a job is cancelled: those its running time
        covered."""
        cfg = self.state.config
        ran = 0.0
        if job.cancel_at is not None and job.cancel_at > start and cfg.running_seconds > 0:
            ran = min(1.0, (job.cancel_at - start).total_seconds() / cfg.running_seconds)
        self._end(job, CANCELLED, int(job.requests * ran), now)

    def _end(self, job: Job, state: str, keep: int, at: datetime) -> None:
        if keep > 0 or state in (SUCCEEDED, PARTIAL):
            self._produce(job, keep, at)
        job.state, job.updated, job.ended = state, at, at

    # --- output ---------------------------------------------------------------------------

    def _produce(self, job: Job, keep: int, at: datetime) -> None:
        stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}Z"
        folder = f"{job.output_prefix.rstrip('/')}/prediction-model-{stamp}"
        writer = _Writer(self, job, folder, at)
        try:
            served = 0
            for uri in job.inputs:
                for raw in self.gcs().lines(uri):
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

    # --- JSON -----------------------------------------------------------------------------

    def resource(self, job: Job) -> dict[str, Any]:
        """The BatchPredictionJob JSON."""
        body = job.body
        out: dict[str, Any] = {
            "name": job.name,
            "displayName": job.display_name,
            "model": pick(body, "model"),
            "inputConfig": pick(body, "inputConfig"),
            "outputConfig": pick(body, "outputConfig"),
            "state": job.state,
            "createTime": rfc3339(job.created),
            "updateTime": rfc3339(job.updated or job.created),
            "modelVersionId": "1",
        }
        if job.started is not None:
            out["startTime"] = rfc3339(job.started)
        if job.ended is not None:
            out["endTime"] = rfc3339(job.ended)
            counts = {
                "successfulCount": job.stats.get("ok", 0),
                "failedCount": job.stats.get("failed", 0),
                "incompleteCount": max(0, job.requests - job.stats.get("seen", 0)),
            }
            out["completionStats"] = {k: str(v) for k, v in counts.items()}
        if job.output_dir is not None:
            out["outputInfo"] = {"gcsOutputDirectory": job.output_dir}
        if job.state in END_ERRORS:
            out["error"] = END_ERRORS[job.state]
        return out


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


def _model(project: str, location: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ApiError(400, "BatchPredictionJob.model is required.")
    model = name.rsplit("/", 1)[-1]
    if model not in models.MODELS or "/models/" not in f"/{name}":
        raise ApiError(
            404,
            f"Publisher Model `projects/{project}/locations/{location}/publishers/google/"
            f"models/{model}` was not found or your project does not have access to it.",
        )
    return model


def _io(body: dict[str, Any]) -> tuple[list[str], str]:
    config = pick(body, "inputConfig") or {}
    if pick(config, "instancesFormat") != "jsonl":
        raise ApiError(400, "Only jsonl instances are supported by this emulator.")
    uris = pick(pick(config, "gcsSource"), "uris")
    if (
        not isinstance(uris, list)
        or not uris
        or not all(isinstance(u, str) and u.startswith("gs://") for u in uris)
    ):
        raise ApiError(400, "BatchPredictionJob.input_config.gcs_source.uris is required.")
    out = pick(body, "outputConfig") or {}
    prefix = pick(pick(out, "gcsDestination"), "outputUriPrefix")
    if pick(out, "predictionsFormat") != "jsonl" or not isinstance(prefix, str):
        raise ApiError(400, "BatchPredictionJob.output_config.gcs_destination is required.")
    if not prefix.startswith("gs://"):
        raise ApiError(400, f"Invalid output URI {prefix}: must start with gs://.")
    return list(uris), prefix


def _default_message(status: int) -> str:
    if status == 429:
        return (
            "Quota exceeded for aiplatform.googleapis.com/"
            "generate_content_batch_requests_per_minute. Please try again later."
        )
    if status >= 500:
        return "The service is currently unavailable."
    return "Request contains an invalid argument."


# ── the handler's side ───────────────────────────────────────────────────────


def serve(
    jobs: VertexJobs,
    op: str,
    project: str,
    location: str,
    job_id: str,
    body: dict[str, Any],
    page: tuple[int, str],
) -> tuple[dict[str, Any] | object, str | None]:
    """(JSON answer or LOST, the job's name for the log) of one batch prediction call."""
    if op == "create":
        job, lose = jobs.create(project, location, body)
        return (LOST if lose else jobs.resource(job)), job.name
    if op == "list":
        found = jobs.listing(project, location)
        size, token = page
        size = 100 if size <= 0 else min(size, 100)
        start = int(token) if token.isdigit() else 0
        answer: dict[str, Any] = {
            "batchPredictionJobs": [jobs.resource(j) for j in found[start : start + size]]
        }
        if start + size < len(found):
            answer["nextPageToken"] = str(start + size)
        return answer, None
    if op == "get":
        job = jobs.get(project, location, job_id)
        return jobs.resource(job), job.name
    if op == "cancel":
        jobs.cancel(project, location, job_id)
        return {}, f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
    if op == "delete":
        return jobs.delete(project, location, job_id), None
    raise ApiError(404, f"Method not found: {op}")
