"""Vertex AI batch prediction, as google-genai uses it in Vertex mode: the
`/{v1,v1beta1}/projects/{p}/locations/{l}/batchPredictionJobs` routes (create, get, list,
cancel, delete) and the job store behind them, with request files read from Cloud Storage
through a GCS emulator (`gcs`, STORAGE_EMULATOR_HOST, e.g. fake-gcs-server).

A job moves PENDING, RUNNING and a final state on the emulator's clock. At its end its
prediction lines are written (`vertex_output`) to
`{outputUriPrefix}/prediction-model-{time}/predictions.jsonl`; the job's
`outputInfo.gcsOutputDirectory` names that folder. Faults: `vertex_faults`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.emulator import models, vertex_output
from pipeline.emulator.gcs import Gcs
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
            vertex_output.produce(self, job, keep, at)
        job.state, job.updated, job.ended = state, at, at

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
