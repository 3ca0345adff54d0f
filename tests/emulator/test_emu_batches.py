"""Batches through the real SDK: create (file, inline), get, list, cancel, delete, limits."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import FLASH25, PRO, file_batch, finish, request, results, upload, write_jsonl
from google import genai
from google.genai import errors

from pipeline.emulator import Emulator


def _raw(emu: Emulator, path: str, key: str | None = "k") -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(emu.url + path, headers={"x-goog-api-key": key} if key else {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_file_batch_states_and_operation_json(emu: Emulator, client: Any, tmp_path: Path) -> None:
    job = file_batch(client, tmp_path, [("a", request("a cat")), ("b", request("a dog"))])
    assert re.fullmatch(r"batches/[a-z0-9]{36}", job.name)
    assert job.state.name == "JOB_STATE_PENDING" and job.model == f"models/{PRO}"
    assert job.display_name == "job" and job.end_time is None
    emu.clock.advance(31)
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_RUNNING"
    emu.clock.advance(60)
    done = client.batches.get(name=job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED" and done.end_time is not None
    assert done.dest.file_name == "files/batch-" + job.name.removeprefix("batches/")
    status, op = _raw(emu, "/v1beta/" + job.name)
    assert status == 200 and op["done"] is True
    meta = op["metadata"]
    assert meta["@type"].endswith(".GenerateContentBatch")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", meta["endTime"])
    assert meta["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
    assert op["response"]["responsesFile"] == meta["output"]["responsesFile"]
    assert op["response"]["@type"].endswith(".GenerateContentBatchOutput")
    out = client.files.get(name=done.dest.file_name)
    assert out.source.name == "GENERATED" and out.download_uri
    assert [r["key"] for r in results(client, done, tmp_path)] == ["a", "b"]
    lines = [e for e in emu.request_log if e["kind"] == "line"]
    assert [(e["key"], e["outcome"]) for e in lines] == [("a", "ok"), ("b", "ok")]
    assert emu.batches()[0]["keys"] == ["a", "b"]


def test_pending_batch_stats_and_no_done(emu: Emulator, client: Any, tmp_path: Path) -> None:
    job = file_batch(client, tmp_path, [("a", request("x"))])
    _, op = _raw(emu, "/v1/" + job.name)
    assert "done" not in op and "output" not in op["metadata"]
    assert op["metadata"]["batchStats"] == {"requestCount": "1", "pendingRequestCount": "1"}


def test_inline_batch(emu: Emulator, client: Any) -> None:
    src = [
        {
            "contents": [{"parts": [{"text": "A red apple"}], "role": "user"}],
            "config": {
                "response_modalities": ["IMAGE"],
                "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
            },
            "metadata": {"key": "apple"},
        },
        {
            "contents": "A pear",
            "config": {"image_config": {"aspect_ratio": "7:7"}},
            "metadata": {"key": "bad"},
        },
    ]
    job = client.batches.create(model=PRO, src=src, config={"display_name": "inline"})
    done = finish(emu, client, job.name)
    assert done.state.name == "JOB_STATE_SUCCEEDED"
    first, second = done.dest.inlined_responses
    assert first.metadata == {"key": "apple"} and first.response.candidates
    parts = first.response.candidates[0].content.parts
    assert parts[-1].inline_data.data.startswith(b"\x89PNG")
    assert second.error.code == 3 and second.response is None
    listed = list(client.batches.list())
    assert listed[0].name == job.name and listed[0].dest is None


def test_list_paging_cancel_delete(emu: Emulator, client: Any, tmp_path: Path) -> None:
    names = [
        file_batch(client, tmp_path, [("a", request("p"))], name=f"j{i}").name for i in range(5)
    ]
    listed = list(client.batches.list(config={"page_size": 2}))
    assert sorted(j.name for j in listed) == sorted(names)
    assert len([e for e in emu.request_log if e["kind"] == "list"]) == 3
    assert client.batches.cancel(name=names[0]) is None
    assert client.batches.get(name=names[0]).state.name == "JOB_STATE_CANCELLED"
    emu.clock.advance(10_000)
    assert client.batches.get(name=names[0]).state.name == "JOB_STATE_CANCELLED"
    client.batches.delete(name=names[1])
    with pytest.raises(errors.ClientError) as exc:
        client.batches.get(name=names[1])
    assert exc.value.code == 404 and exc.value.status == "NOT_FOUND"
    assert names[1] not in {j.name for j in client.batches.list()}


def test_pending_too_long_expires(tmp_path: Path) -> None:
    with Emulator(image_scale=0.02, pending_seconds=3 * 86400) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        job = file_batch(client, tmp_path, [("a", request("x"))])
        emu.clock.advance(47 * 3600)
        assert client.batches.get(name=job.name).state.name == "JOB_STATE_PENDING"
        emu.clock.advance(3601)
        got = client.batches.get(name=job.name)
        assert got.state.name == "JOB_STATE_EXPIRED" and got.dest is None


def test_enqueued_token_quota(tmp_path: Path) -> None:
    with Emulator(image_scale=0.02, enqueued_token_quota={PRO: 3000}) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        file_batch(client, tmp_path, [("a", request("x")), ("b", request("y"))], name="one")
        with pytest.raises(errors.ClientError) as exc:
            file_batch(client, tmp_path, [("c", request("z"))], name="two")
        assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"
        assert "exceeded your current quota" in exc.value.message
        file_batch(client, tmp_path, [("c", request("z"))], model=FLASH25, name="other")
        emu.clock.advance(10_000)
        file_batch(client, tmp_path, [("c", request("z"))], name="three")


def test_max_live_batches(tmp_path: Path) -> None:
    with Emulator(image_scale=0.02, max_live_batches=2) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        for i in range(2):
            file_batch(client, tmp_path, [("a", request("x"))], name=f"b{i}")
        with pytest.raises(errors.ClientError) as exc:
            file_batch(client, tmp_path, [("a", request("x"))], name="b3")
        assert exc.value.code == 429


def test_unknown_model_and_missing_file(client: Any, tmp_path: Path) -> None:
    f = upload(client, write_jsonl(tmp_path / "in.jsonl", [("a", request("x"))]))
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-9-ultra", src=f.name)
    assert exc.value.code == 404 and "models/gemini-9-ultra is not found" in exc.value.message
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model=PRO, src="files/nosuchfile12")
    assert exc.value.code == 403


def test_api_key_checks(tmp_path: Path) -> None:
    with Emulator(api_key="right") as emu:
        bad = genai.Client(api_key="wrong", http_options={"base_url": emu.url})
        with pytest.raises(errors.ClientError) as exc:
            list(bad.batches.list())
        assert exc.value.code == 400 and exc.value.status == "INVALID_ARGUMENT"
        assert exc.value.message == "API key not valid. Please pass a valid API key."
        assert exc.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        status, body = _raw(emu, "/v1beta/batches", key=None)
        assert status == 403 and body["error"]["status"] == "PERMISSION_DENIED"
        assert _raw(emu, "/v1beta/batches?key=right", key=None)[0] == 200
        good = genai.Client(api_key="right", http_options={"base_url": emu.url})
        src = write_jsonl(tmp_path / "in.jsonl", [("a", request("x"))])
        assert upload(good, src).name.startswith("files/")


def test_v1beta_path_and_unknown_batch(emu: Emulator, tmp_path: Path) -> None:
    client = genai.Client(api_key="k", http_options={"base_url": emu.url, "api_version": "v1beta"})
    job = file_batch(client, tmp_path, [("a", request("x"))])
    done = finish(emu, client, job.name)
    assert results(client, done, tmp_path)[0]["key"] == "a"
    assert any(e.get("path", "").startswith("/v1beta/batches/") for e in emu.request_log)
    status, body = _raw(emu, "/download/v1beta/" + done.dest.file_name + ":download?alt=media")
    assert status == 200 and body["key"] == "a"
    with pytest.raises(errors.ClientError) as exc:
        client.batches.get(name="batches/doesnotexist")
    assert exc.value.code == 404
