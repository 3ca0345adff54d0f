"""Small things real clients read: File.sha256Hash and uri as the service writes them, 429 details
(QuotaFailure, RetryInfo), and the default timing of `emulator serve`."""

from __future__ import annotations

import base64
import hashlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from emu_helpers import PRO, file_batch, finish, request, upload, write_jsonl
from google import genai
from google.genai import errors

from pipeline.emulator import REALISTIC_TIMING, Emulator, FaultPlan, timing
from pipeline.emulator.cli import serve_command

REPO = Path(__file__).resolve().parents[2]
RPC = "type.googleapis.com/google.rpc."


def test_sha256_hash_is_base64_of_the_hex_digest(client: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [("k", request("a cat"))])
    f = upload(client, path)
    hex_digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f.sha256_hash == base64.b64encode(hex_digest.encode()).decode()
    assert len(f.sha256_hash) == 88
    assert client.files.get(name=f.name).sha256_hash == f.sha256_hash


def test_output_file_sha256_and_uris(emu: Emulator, client: Any, tmp_path: Path) -> None:
    job = finish(emu, client, file_batch(client, tmp_path, [("k", request("x"))]).name)
    out = client.files.get(name=job.dest.file_name)
    data = client.files.download(file=job.dest.file_name)
    assert base64.b64decode(out.sha256_hash).decode() == hashlib.sha256(data).hexdigest()
    file_id = job.dest.file_name.removeprefix("files/")
    # The SDK 3.x asked on /v1/; the service writes uris with v1beta all the same.
    assert out.uri == f"{emu.url}/v1beta/files/{file_id}"
    assert out.download_uri == f"{emu.url}/download/v1beta/files/{file_id}:download?alt=media"
    assert any(e["path"].startswith("/v1/files/") for e in emu.request_log if "path" in e)


def _details(exc: errors.ClientError) -> dict[str, Any]:
    return {d["@type"].removeprefix(RPC): d for d in exc.details["error"]["details"]}


def test_quota_429_carries_retry_info_and_quota_failure(tmp_path: Path) -> None:
    with Emulator(
        image_scale=0.02, enqueued_token_quota=1200, pending_seconds=30, running_seconds=60
    ) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        file_batch(client, tmp_path, [("a", request("one"))], name="first")
        emu.clock.advance(20)
        with pytest.raises(errors.ClientError) as exc:
            file_batch(client, tmp_path, [("b", request("two"))], name="second")
    assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"
    details = _details(exc.value)
    (violation,) = details["QuotaFailure"]["violations"]
    assert violation["quotaDimensions"] == {"location": "global", "model": PRO}
    assert violation["quotaValue"] == "1200"
    assert violation["quotaMetric"].startswith("generativelanguage.googleapis.com/")
    # The first batch ends 90 s after it was made; 20 s have passed.
    assert details["RetryInfo"] == {"@type": RPC + "RetryInfo", "retryDelay": "70s"}
    assert details["Help"]["links"][0]["url"].endswith("/rate-limits")


def test_every_429_has_retry_info(tmp_path: Path) -> None:
    plan = FaultPlan.from_dict(
        {"create_errors": [{"status": 429}], "get_errors": [{"status": 429}]}
    )
    with Emulator(image_scale=0.02, faults=plan, max_live_batches=1) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        caught = []
        for _ in range(2):  # the injected create 429, then the live-batch limit after one
            with pytest.raises(errors.ClientError) as exc:
                file_batch(client, tmp_path, [("a", request("one"))])
                file_batch(client, tmp_path, [("b", request("two"))], name="more")
            caught.append(exc.value)
        job = client.batches.list().page[0]
        with pytest.raises(errors.ClientError) as exc:
            client.batches.get(name=job.name)
        caught.append(exc.value)
    for err in caught:
        assert err.code == 429
        details = _details(err)
        assert re.fullmatch(r"[1-9]\d*s", details["RetryInfo"]["retryDelay"])
        assert details["QuotaFailure"]["violations"][0]["quotaId"]


def test_serve_defaults_finish_a_small_batch_in_seconds(tmp_path: Path) -> None:
    assert timing(False, None, None) == (2.0, 3.0)
    assert timing(True, None, None) == REALISTIC_TIMING
    assert timing(True, 5.0, None) == (5.0, REALISTIC_TIMING[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.emulator", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        client = genai.Client(api_key="k", http_options={"base_url": url})
        job = file_batch(client, tmp_path, [("k", request("a cat"))])
        states = []
        for _ in range(60):  # no clock advance: the emulator's own default timing
            states.append(client.batches.get(name=job.name).state.name)
            if states[-1] == "JOB_STATE_SUCCEEDED":
                break
            time.sleep(0.5)
        assert states[-1] == "JOB_STATE_SUCCEEDED", states
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_serve_help_tells_the_timing() -> None:
    result = CliRunner().invoke(serve_command, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "With no flags a small batch finishes in seconds" in text
    assert "--realistic" in text and "Service-like timing: PENDING 300 s" in text
