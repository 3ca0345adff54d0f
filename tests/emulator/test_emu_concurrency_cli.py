"""Concurrent poll + download, SDK 1.x (/v1beta/) in a subprocess, and the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from emu_helpers import file_batch, finish, request, results

from pipeline.emulator import Emulator
from pipeline.emulator.cli import serve_command

REPO = Path(__file__).resolve().parents[2]


def test_poll_and_download_at_once(emu: Emulator, client: Any, tmp_path: Path) -> None:
    rows = [(f"k{i}", request(f"p{i}", "16:9", "4K")) for i in range(20)]
    done = finish(emu, client, file_batch(client, tmp_path, rows).name)
    other = file_batch(client, tmp_path, rows[:1], name="other")
    emu.faults.download.bytes_per_second = 2_000_000
    errors: list[BaseException] = []
    polls: list[str] = []

    def poll() -> None:
        try:
            for _ in range(20):
                polls.append(client.batches.get(name=other.name).state.name)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=poll)
    t.start()
    lines = results(client, done, tmp_path)
    t.join()
    assert not errors and len(polls) == 20 and len(lines) == 20
    downloads = [e for e in emu.request_log if e["kind"] == "download"]
    gets = [e for e in emu.request_log if e["kind"] == "get"]
    assert downloads and len(gets) >= 21


def _sdk1_path() -> Path | None:
    path = Path(os.environ.get("NANOBATCH_SDK1_PATH", REPO / ".venv" / "sdk1"))
    if (path / "google" / "genai").is_dir():
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"google-genai 1.x not found at {path} (set NANOBATCH_SDK1_PATH)")
    return None


SDK1_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from google import genai
    assert genai.__version__.startswith("1."), genai.__version__
    url, src = sys.argv[1], sys.argv[2]
    client = genai.Client(api_key="k", http_options={"base_url": url})
    f = client.files.upload(file=src, config={"mime_type": "jsonl"})
    job = client.batches.create(model="gemini-3-pro-image-preview", src=f.name,
                                config={"display_name": "sdk1"})
    print(json.dumps({"name": job.name, "state": job.state.name}), flush=True)
    sys.stdin.readline()
    job = client.batches.get(name=job.name)
    data = client.files.download(file=job.dest.file_name)
    print(json.dumps({"state": job.state.name, "keys": [json.loads(x)["key"]
                      for x in data.decode().splitlines()]}), flush=True)
    """
)


def test_sdk1_v1beta_in_subprocess(emu: Emulator, tmp_path: Path) -> None:
    sdk1 = _sdk1_path()
    if sdk1 is None:
        pytest.skip("google-genai 1.x not installed (NANOBATCH_SDK1_PATH)")
    src = tmp_path / "in.jsonl"
    src.write_text('{"key": "one", "request": {"contents": [{"parts": [{"text": "x"}]}]}}\n')
    env = {**os.environ, "PYTHONPATH": str(sdk1)}
    env.pop("GOOGLE_GENAI_API_VERSION", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", SDK1_SCRIPT, emu.url, str(src)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stdin is not None
    first = proc.stdout.readline()
    assert "JOB_STATE_PENDING" in first, proc.stderr.read() if proc.stderr else ""
    emu.clock.advance(10_000)
    out, err = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0, err
    assert '"JOB_STATE_SUCCEEDED"' in out and '["one"]' in out
    paths = {e["path"].split("/")[1] for e in emu.request_log if "path" in e}
    assert paths <= {"v1beta", "upload"} and "v1beta" in paths


def test_python_m_serve_prints_url_and_stops(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.emulator", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        from google import genai

        client = genai.Client(api_key="k", http_options={"base_url": line.split()[-1]})
        assert list(client.batches.list()) == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_click_command_help() -> None:
    result = CliRunner().invoke(serve_command, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--host",
        "--port",
        "--api-key",
        "--speed",
        "--faults",
        "--image-scale",
        "--data-dir",
    ):
        assert option in result.output
