"""Shared helpers for the emulator tests: request lines, JSONL files, finishing batches."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from google.genai import types

from pipeline.emulator import Emulator

PRO = "gemini-3-pro-image-preview"
FLASH25 = "gemini-2.5-flash-image"
FLASH31 = "gemini-3.1-flash-image-preview"


def request(prompt: str, ratio: str = "1:1", size: str | None = "1K") -> dict[str, Any]:
    """A REST GenerateContentRequest for one image (no imageSize when ``size`` is None, as
    gemini-2.5-flash-image requires)."""
    image: dict[str, Any] = {"aspectRatio": ratio}
    if size is not None:
        image["imageSize"] = size
    return {
        "contents": [{"role": "user", "parts": [{"text": prompt}]}],
        "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": image},
    }


def write_jsonl(path: Path, rows: list[tuple[str, dict[str, Any]]]) -> Path:
    """Write ``{"key", "request"}`` lines."""
    with path.open("w", encoding="utf-8") as f:
        for key, req in rows:
            f.write(json.dumps({"key": key, "request": req}) + "\n")
    return path


def upload(client: Any, path: Path) -> types.File:
    """Upload a JSONL file with the SDK."""
    return client.files.upload(
        file=str(path), config={"mime_type": "jsonl", "display_name": path.stem}
    )


def file_batch(
    client: Any,
    tmp: Path,
    rows: list[tuple[str, dict[str, Any]]],
    model: str = PRO,
    name: str = "job",
) -> types.BatchJob:
    """Upload ``rows`` and create a file batch."""
    f = upload(client, write_jsonl(tmp / f"{name}.jsonl", rows))
    return client.batches.create(model=model, src=f.name, config={"display_name": name})


def finish(emu: Emulator, client: Any, name: str) -> types.BatchJob:
    """Advance the clock past the batch's processing and get it."""
    emu.clock.advance(10_000)
    return client.batches.get(name=name)


def results(client: Any, job: types.BatchJob, tmp: Path) -> list[dict[str, Any]]:
    """Download a finished file batch's results and parse its lines."""
    assert job.dest is not None and job.dest.file_name
    dest = tmp / "results.jsonl"
    client.files.download(file=job.dest.file_name, destination=str(dest))
    with dest.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def http(
    emu: Emulator, method: str, path: str, body: Any = None, key: str = "k"
) -> tuple[int, Any]:
    """A raw HTTP call like the documentation's curl examples: (status, parsed JSON body)."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(
        emu.url + path,
        data=data,
        method=method,
        headers={"x-goog-api-key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def line_results(
    emu: Emulator, client: Any, tmp: Path, rows: list[Any], model: str = PRO, name: str = "job"
) -> dict[str, dict[str, Any]]:
    """Upload raw line objects (or strings), run the file batch to the end, return its
    results by key."""
    path = tmp / f"{name}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    job = client.batches.create(model=model, src=upload(client, path).name)
    return {r.get("key", ""): r for r in results(client, finish(emu, client, job.name), tmp)}
