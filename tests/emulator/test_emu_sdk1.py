"""The refusals and new endpoints through google-genai 1.x (/v1beta/), in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_emu_concurrency_cli import _sdk1_path

from pipeline.emulator import Emulator

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from google import genai
    from google.genai import errors
    assert genai.__version__.startswith("1."), genai.__version__
    url, src = sys.argv[1], sys.argv[2]
    client = genai.Client(api_key="k", http_options={"base_url": url})
    out = {}
    f = client.files.upload(file=src, config={"mime_type": "jsonl"})
    out["uri"] = f.uri
    out["sha_len"] = len(f.sha256_hash)
    job = client.batches.create(model="gemini-3-pro-image-preview", src=f.name)
    out["file_job"] = job.name
    text = client.batches.create(
        model="gemini-2.5-flash",
        src=[{"contents": [{"parts": [{"text": "Why is the sky blue?"}], "role": "user"}]}],
    )
    out["text_job"] = text.name
    emb = client.batches.create_embeddings(
        model="gemini-embedding-001",
        src={"inlined_requests": {"contents": ["hello"], "config": {"output_dimensionality": 128}}},
    )
    out["embed_job"] = emb.name
    out["tokens"] = client.models.count_tokens(
        model="gemini-2.5-flash", contents="a watercolor fox in the snow"
    ).total_tokens
    try:
        client.batches.create(model="gemini-9-ultra", src=f.name)
    except errors.ClientError as exc:
        out["unknown_model"] = [exc.code, exc.message]
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
    job = client.batches.get(name=out["file_job"])
    lines = [json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()]
    out = {"lines": {x["key"]: x.get("error") for x in lines}}
    print(json.dumps(out), flush=True)
    sys.stdin.readline()
    """
)


def test_sdk1_refusals_and_new_endpoints(emu: Emulator, tmp_path: Path) -> None:
    sdk1 = _sdk1_path()
    if sdk1 is None:
        pytest.skip("google-genai 1.x not installed (NANOBATCH_SDK1_PATH)")
    src = tmp_path / "in.jsonl"
    bad = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"aspectRatio": "1:1"}}
    src.write_text(
        json.dumps({"key": "bad", "request": bad})
        + "\n"
        + json.dumps({"key": "good", "request": {"contents": [{"parts": [{"text": "x"}]}]}})
        + "\n"
    )
    env = {**os.environ, "PYTHONPATH": str(sdk1)}
    env.pop("GOOGLE_GENAI_API_VERSION", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, emu.url, str(src)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stdin is not None
    first = proc.stdout.readline()
    assert first, proc.stderr.read() if proc.stderr else ""
    made = json.loads(first)
    assert made["uri"].endswith("/v1beta/files/" + made["uri"].rsplit("/", 1)[-1])
    assert made["sha_len"] == 88 and made["tokens"] == 7
    assert made["unknown_model"][0] == 404
    assert "is not found for API version v1beta," in made["unknown_model"][1]
    emu.clock.advance(10_000)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    second = json.loads(proc.stdout.readline())
    proc.communicate("done\n", timeout=60)
    assert proc.returncode == 0
    assert second["lines"] == {
        "bad": {
            "code": 3,
            "message": 'Invalid JSON payload received. Unknown name "aspectRatio" at '
            "'request.generation_config': Cannot find field.",
        },
        "good": None,
    }
    states = {b["name"]: b["state"] for b in emu.batches()}
    assert states[made["text_job"]] == states[made["embed_job"]] == "BATCH_STATE_SUCCEEDED"
    paths = {e["path"].split("/")[1] for e in emu.request_log if "path" in e}
    assert paths <= {"v1beta", "upload"}
