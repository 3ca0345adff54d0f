"""`nanobatch run` on the Vertex AI channel (CONTRACT section 10): google-genai in Vertex mode
against the emulator's batch prediction routes, request files and predictions in
fake-gcs-server, images to gs:// and to a local folder; the account checked against the
emulator's own prediction lines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from e2e_checks import check_report_shape, final_image, line_tokens, sha256, tokens_cost
from google.cloud import storage

from pipeline.emulator import Emulator

pytestmark = pytest.mark.gcs
PROJECT, LOCATION = "demo-proj", "us-central1"
MODEL = "gemini-3-pro-image-preview"


def channel(bucket: str, **extra: str) -> str:
    fields = {"kind": "vertex", "project": PROJECT, "location": LOCATION}
    fields["staging_uri"] = f"gs://{bucket}/staging"
    fields.update(extra)
    body = "".join(f'{k} = "{v}"\n' for k, v in fields.items())
    return f"[channel]\n{body}"


def gcs() -> storage.Client:
    return storage.Client(project="nanobatch-test")


def objects(bucket: str, prefix: str) -> list[str]:
    return sorted(b.name for b in gcs().list_blobs(bucket, prefix=prefix))


def prediction_lines(emu: Emulator) -> list[dict[str, Any]]:
    """Every line of every prediction file the emulator wrote, read from GCS."""
    lines: list[dict[str, Any]] = []
    for job in emu.vertex_jobs():
        if not job["outputDir"]:
            continue
        bucket, _, prefix = job["outputDir"].removeprefix("gs://").partition("/")
        for blob in sorted(gcs().list_blobs(bucket, prefix=prefix + "/"), key=lambda b: b.name):
            lines += [json.loads(r) for r in blob.download_as_bytes().splitlines() if r.strip()]
    return lines


def vertex_world(e2e: Any, bucket: str, output: str, **spec: Any) -> None:
    e2e.monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", e2e.emu.url)
    extra = channel(bucket)
    e2e.write_spec(output=output, extra="", **spec)
    text = e2e.spec_path.read_text(encoding="utf-8")
    e2e.spec_path.write_text(text + extra, encoding="utf-8")


def check_account(e2e: Any, report: dict[str, Any]) -> None:
    """Every item's tokens and cost equal the sums over its prediction lines, at batch price."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for line in prediction_lines(e2e.emu):
        by_key.setdefault(line["key"], []).append(line)
    total = Decimal(0)
    for item in report["items"]:
        lines = by_key.get(item["key"], [])
        tokens = {k: sum(line_tokens(x)[k] for x in lines) for k in line_tokens({})}
        for name, value in tokens.items():
            assert item[name] == value, (item["key"], name)
        cost = sum((tokens_cost(MODEL, line_tokens(x)) for x in lines), Decimal(0))
        assert round(item["cost_usd"], 9) == round(float(cost), 9)
        total += cost
    assert round(report["summary"]["cost_usd"], 9) == round(float(total), 9)


@pytest.mark.parametrize("where", ["gcs", "local"])
def test_vertex_run_end_to_end(e2e: Any, gcs_env: str, where: str) -> None:
    """A Vertex spec runs to the end through the batch prediction routes only: request files
    and predictions under staging_uri, images stored where [output] says, each image the
    bytes of its prediction line, the account equal to the lines' usage."""
    output = f"gs://{gcs_env}/out/{{job}}" if where == "gcs" else "out/{job}"
    vertex_world(e2e, gcs_env, output)
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    check_report_shape(report)
    assert report["summary"]["succeeded"] == 4 and report["summary"]["rejected"] == 1
    kinds = {e["kind"] for e in e2e.emu.request_log if e.get("kind") != "vertex_line"}
    assert kinds <= {"vertex_create", "vertex_get", "vertex_list"}, kinds
    jobs = e2e.emu.vertex_jobs()
    assert len(jobs) == 2 and {j["state"] for j in jobs} == {"JOB_STATE_SUCCEEDED"}
    for job in jobs:
        display = job["displayName"]
        assert job["inputs"] == [f"gs://{gcs_env}/staging/{display}/input.jsonl"]
        assert job["outputDir"].startswith(f"gs://{gcs_env}/staging/{display}/predictions/")
    lines = {line["key"]: line for line in prediction_lines(e2e.emu)}
    for item in report["items"]:
        data = final_image(lines[item["key"]])
        assert item["sha256"] == sha256(data)
        if where == "gcs":
            assert item["uri"] == f"gs://{gcs_env}/out/e2e-job/{item['key']}.png"
            blob = gcs().bucket(gcs_env).blob(f"out/e2e-job/{item['key']}.png")
            assert blob.download_as_bytes() == data
        else:
            assert Path(item["uri"]).read_bytes() == data
    check_account(e2e, report)


def test_vertex_run_with_emulator_flag(e2e: Any, gcs_env: str) -> None:
    """`run --emulator` serves a Vertex spec from its in-process emulator (a placeholder token,
    predictions in the GCS emulator)."""
    e2e.monkeypatch.delenv("GEMINI_API_KEY")
    e2e.monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL")
    e2e.write_spec(output="out/{job}")
    spec = e2e.spec_path
    spec.write_text(spec.read_text(encoding="utf-8") + channel(gcs_env), encoding="utf-8")
    result = e2e.invoke("run", str(spec), "--emulator", "--poll-interval", "0.2", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["succeeded"] == 4
    assert objects(gcs_env, "staging/")  # request files and predictions went through GCS
    assert not e2e.emu.request_log  # the test's own emulator saw nothing


def test_emulator_flag_on_vertex_spec_needs_a_gcs_emulator(e2e: Any) -> None:
    e2e.write_spec()
    spec = e2e.spec_path
    spec.write_text(spec.read_text(encoding="utf-8") + channel("bucket"), encoding="utf-8")
    result = e2e.invoke("run", str(spec), "--emulator")
    assert result.code == 2
    assert "STORAGE_EMULATOR_HOST" in result.stderr


def test_google_genai_use_vertexai_does_not_change_a_gemini_spec(e2e: Any) -> None:
    """Until a spec says kind = "vertex", the SDK's Vertex variables change nothing: the run
    goes to the Developer API with the API key."""
    e2e.monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    e2e.monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    e2e.monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", LOCATION)
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["succeeded"] == 4
    kinds = {e["kind"] for e in e2e.emu.request_log}
    assert "create" in kinds and not any(k.startswith("vertex") for k in kinds)


def test_readme_vertex_example_runs_on_the_emulators(
    tmp_path: Path, gcs_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's commands: a GCS emulator with the staging bucket, STORAGE_EMULATOR_HOST,
    then `nanobatch run jobs/vertex-example.toml --emulator` (a fresh process, from a copy of
    jobs/) exits 0 with every image stored."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "nanobatch run jobs/vertex-example.toml --emulator\n" in readme
    assert '"name": "nanobatch-example"' in readme
    shutil.copytree(root / "jobs", tmp_path / "jobs")
    gcs_server.make_bucket("nanobatch-example")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)  # for this test's own reads
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NANOBATCH_", "GEMINI_", "GOOGLE_"))
    }
    env.update(
        STORAGE_EMULATOR_HOST=gcs_server.url, PYTHONPATH=str(root), NANOBATCH_LOG_FORMAT="json"
    )
    command = ["run", "jobs/vertex-example.toml", "--emulator", "--poll-interval", "0.2", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["summary"]["succeeded"] == len(report["items"]) > 0
    for item in report["items"]:
        assert Path(item["uri"]).is_relative_to(tmp_path / "out" / "vertex-example")
    staged = objects("nanobatch-example", "staging/")
    assert any(name.endswith("/input.jsonl") for name in staged)
    assert any("/predictions/prediction-model-" in name for name in staged)


def test_submit_checks_the_staging_prefix_before_recording(e2e: Any, gcs_env: str) -> None:
    """A staging bucket that does not exist: submit exits 1 naming it, records nothing and
    creates no job."""
    vertex_world(e2e, "no-such-staging-bucket", f"gs://{gcs_env}/out/{{job}}")
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 1
    assert "gs://no-such-staging-bucket" in result.stderr and "nothing was spent" in result.stderr
    assert e2e.invoke("status", "--json").json() == {"runs": []}
    assert e2e.emu.vertex_jobs() == []
