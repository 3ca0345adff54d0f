"""The emulator's Vertex AI batch prediction routes through the real google-genai SDK in
Vertex mode (project and location as arguments, a placeholder bearer token, the base URL in
http_options), with request files and predictions in fake-gcs-server."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import google.oauth2.credentials
import httpx2
import pytest
from emu_helpers import request
from google import genai
from google.cloud import storage
from google.genai import errors

from pipeline.emulator import Emulator, FaultPlan

pytestmark = pytest.mark.gcs
PROJECT, LOCATION = "demo-proj", "us-central1"


@pytest.fixture
def vemu(gcs_env: str) -> Iterator[Emulator]:
    with Emulator(image_scale=0.02, pending_seconds=30, running_seconds=60) as e:
        yield e


def vclient(emu: Emulator, version: str | None = None) -> Any:
    options: dict[str, Any] = {"base_url": emu.url}
    if version:
        options["api_version"] = version
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=google.oauth2.credentials.Credentials(token="emulator"),
        http_options=options,
    )


def put_input(bucket: str, name: str, keys: list[str], size: str = "1K") -> str:
    body = "".join(
        json.dumps({"key": k, "request": request(f"a photo of {k}", size=size)}) + "\n"
        for k in keys
    )
    storage.Client(project="t").bucket(bucket).blob(name).upload_from_string(body)
    return f"gs://{bucket}/{name}"


def output_lines(out_dir: str) -> list[dict[str, Any]]:
    bucket, _, prefix = out_dir.removeprefix("gs://").partition("/")
    client = storage.Client(project="t")
    blobs = sorted(client.list_blobs(bucket, prefix=prefix + "/"), key=lambda b: b.name)
    found = []
    for blob in blobs:
        for raw in blob.download_as_bytes().splitlines():
            if raw.strip():
                found.append(json.loads(raw))
    return found


def create(client: Any, src: str, bucket: str, name: str = "job-1") -> Any:
    return client.batches.create(
        model="gemini-3-pro-image-preview",
        src=src,
        config={"dest": f"gs://{bucket}/out/{name}", "display_name": name},
    )


@pytest.mark.parametrize("version", [None, "v1"])
def test_vertex_job_end_to_end_through_the_sdk(
    vemu: Emulator, gcs_env: str, version: str | None
) -> None:
    """create/get/list/cancel/delete on /v1beta1 and /v1; predictions in GCS with key,
    status "", processed_time, the echoed request and a real PNG with usage."""
    client = vclient(vemu, version)
    src = put_input(gcs_env, "in/a.jsonl", ["k1", "k2"])
    job = create(client, src, gcs_env)
    assert job.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    assert job.state.name == "JOB_STATE_PENDING"
    assert job.display_name == "job-1"
    # The emulator logs a request before it answers, so the entry is there already.
    paths = [e["path"] for e in vemu.request_log if e["kind"] == "vertex_create"]
    assert paths == [
        f"/{version or 'v1beta1'}/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"
    ]
    vemu.clock.advance(31)
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_RUNNING"
    vemu.clock.advance(60)
    done = client.batches.get(name=job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.done
    assert done.completion_stats.successful_count == 2
    out = done.output_info.gcs_output_directory
    assert out.startswith(f"gs://{gcs_env}/out/job-1/prediction-model-")
    lines = output_lines(out)
    assert [line["key"] for line in lines] == ["k1", "k2"]
    for line in lines:
        assert line["status"] == "" and line["processed_time"]
        assert line["request"]["contents"][0]["parts"][0]["text"].startswith("a photo of")
        parts = line["response"]["candidates"][0]["content"]["parts"]
        image = [p for p in parts if "inlineData" in p and not p.get("thought")][-1]
        assert base64.b64decode(image["inlineData"]["data"])[:8] == b"\x89PNG\r\n\x1a\n"
        assert line["response"]["usageMetadata"]["candidatesTokenCount"] > 0
    listed = list(client.batches.list(config={"page_size": 5}))
    assert [j.name for j in listed] == [job.name]
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as exc:
        client.batches.get(name=job.name)
    assert exc.value.code == 404


def test_partially_succeeded_is_not_done_in_the_sdk(vemu: Emulator, gcs_env: str) -> None:
    """The SDK's trap: BatchJob.done is False for JOB_STATE_PARTIALLY_SUCCEEDED."""
    vemu.faults = FaultPlan.from_dict(
        {"vertex": {"job_faults": [{"state": "PARTIALLY_SUCCEEDED", "keep": 1, "next": 1}]}}
    )
    client = vclient(vemu)
    job = create(client, put_input(gcs_env, "in/p.jsonl", ["a", "b", "c"]), gcs_env)
    vemu.clock.advance(100)
    done = client.batches.get(name=job.name)
    assert done.state.name == "JOB_STATE_PARTIALLY_SUCCEEDED"
    assert done.done is False
    assert [line["key"] for line in output_lines(done.output_info.gcs_output_directory)] == ["a"]
    assert done.completion_stats.incomplete_count == 2


def test_cancel_running_job_keeps_completed_rows(vemu: Emulator, gcs_env: str) -> None:
    client = vclient(vemu)
    job = create(client, put_input(gcs_env, "in/c.jsonl", [f"k{i}" for i in range(4)]), gcs_env)
    vemu.clock.advance(30 + 30)  # half-way through running
    assert client.batches.cancel(name=job.name) is None
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_CANCELLED"
    done = client.batches.get(name=job.name)
    assert len(output_lines(done.output_info.gcs_output_directory)) == 2


def test_line_faults_and_duplicates_and_files(vemu: Emulator, gcs_env: str) -> None:
    vemu.faults = FaultPlan.from_dict(
        {
            "vertex": {
                "line_errors": [{"keys": ["bad"], "status": "INVALID_ARGUMENT: no"}],
                "missing": [{"keys": ["gone"]}],
                "duplicates": [{"keys": ["dup"], "extra": ["image", "text", "error"]}],
                "files": 2,
            }
        }
    )
    client = vclient(vemu)
    keys = ["ok", "bad", "gone", "dup"]
    job = create(client, put_input(gcs_env, "in/f.jsonl", keys), gcs_env)
    vemu.clock.advance(100)
    out = client.batches.get(name=job.name).output_info.gcs_output_directory
    lines = output_lines(out)
    assert [line["key"] for line in lines] == ["ok", "bad", "dup", "dup", "dup", "dup"]
    assert lines[1]["status"] == "INVALID_ARGUMENT: no" and "response" not in lines[1]
    dup_images = [
        p["inlineData"]["data"]
        for line in lines[2:4]
        for p in line["response"]["candidates"][0]["content"]["parts"]
        if "inlineData" in p and not p.get("thought")
    ]
    assert len(dup_images) == 2 and dup_images[0] != dup_images[1]
    assert "inlineData" not in json.dumps(lines[4]["response"]["candidates"])
    assert lines[5]["status"] and "response" not in lines[5]
    bucket, _, prefix = out.removeprefix("gs://").partition("/")
    names = [
        b.name.rsplit("/", 1)[-1]
        for b in storage.Client(project="t").list_blobs(bucket, prefix=prefix + "/")
    ]
    assert sorted(names) == ["predictions_0001.jsonl", "predictions_0002.jsonl"]


def test_sizes_other_than_1k_fail_their_lines(vemu: Emulator, gcs_env: str) -> None:
    client = vclient(vemu)
    job = create(client, put_input(gcs_env, "in/s.jsonl", ["big"], size="2K"), gcs_env)
    vemu.clock.advance(100)
    lines = output_lines(client.batches.get(name=job.name).output_info.gcs_output_directory)
    assert "INVALID_ARGUMENT" in lines[0]["status"] and "1K" in lines[0]["status"]


def test_create_errors_lost_answers_and_expiry(vemu: Emulator, gcs_env: str) -> None:
    vemu.faults = FaultPlan.from_dict(
        {
            "vertex": {
                "create_errors": [{"status": 429}, {"status": 503}],
                "lost_creates": 1,
                "job_faults": [{"state": "EXPIRED", "keep": 0, "display_name_contains": "exp"}],
            }
        }
    )
    client = vclient(vemu)
    src = put_input(gcs_env, "in/e.jsonl", ["x"])
    for code in (429, 503):
        with pytest.raises(errors.APIError) as exc:
            create(client, src, gcs_env)
        assert exc.value.code == code
    with pytest.raises(httpx2.HTTPError):
        create(client, src, gcs_env, "lost-1")
    assert [j.display_name for j in client.batches.list()] == ["lost-1"]
    job = create(client, src, gcs_env, "exp-1")
    vemu.clock.advance(100)
    ended = client.batches.get(name=job.name)
    assert ended.state.name == "JOB_STATE_EXPIRED" and ended.output_info is None
    assert ended.error.code == 4


def test_refusals(vemu: Emulator, gcs_env: str) -> None:
    """No bearer token: 401; a missing input file: 400; an unknown model: 404."""
    client = vclient(vemu)
    with pytest.raises(errors.ClientError) as exc:
        create(client, f"gs://{gcs_env}/in/none.jsonl", gcs_env)
    assert exc.value.code == 400
    src = put_input(gcs_env, "in/r.jsonl", ["x"])
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="no-such-model", src=src, config={"dest": f"gs://{gcs_env}/o"})
    assert exc.value.code == 404
    raw = httpx2.get(f"{vemu.url}/v1beta1/projects/p/locations/l/batchPredictionJobs")
    assert raw.status_code == 401
