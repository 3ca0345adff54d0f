"""Reference images through the emulator with the real SDK: fileData resolved against its own
uploads, a missing or expired file a per-line error, the image depending on the references'
bytes and the seed, and input image tokens per model."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import FLASH25, FLASH31, PRO, file_batch, finish, request, results

from pipeline.emulator import Emulator

PNG_A = b"\x89PNG\r\n\x1a\n" + b"a" * 64
PNG_B = b"\x89PNG\r\n\x1a\n" + b"b" * 64


def _image_file(client: Any, tmp: Path, name: str, data: bytes) -> Any:
    path = tmp / f"{name}.png"
    path.write_bytes(data)
    return client.files.upload(file=str(path), config={"mime_type": "image/png"})


def _with_refs(prompt: str, uris: list[str], seed: int | None = None) -> dict[str, Any]:
    req = request(prompt)
    parts = [{"fileData": {"mimeType": "image/png", "fileUri": u}} for u in uris]
    req["contents"][0]["parts"] = [*parts, *req["contents"][0]["parts"]]
    if seed is not None:
        req["generationConfig"]["seed"] = seed
    return req


def _final_image(line: dict[str, Any]) -> bytes:
    parts = line["response"]["candidates"][0]["content"]["parts"]
    final = [p for p in parts if "inlineData" in p and not p.get("thought")][-1]
    return base64.b64decode(final["inlineData"]["data"])


def test_image_depends_on_reference_bytes_and_seed(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    a = _image_file(client, tmp_path, "a", PNG_A)
    b = _image_file(client, tmp_path, "b", PNG_B)
    a_again = _image_file(client, tmp_path, "a2", PNG_A)  # same bytes, another file
    rows = [
        ("plain", request("a shoe")),
        ("a", _with_refs("a shoe", [a.uri])),
        ("a-name", _with_refs("a shoe", [a.name])),
        ("a-again", _with_refs("a shoe", [a_again.uri])),
        ("b", _with_refs("a shoe", [b.uri])),
        ("ab", _with_refs("a shoe", [a.uri, b.uri])),
        ("ba", _with_refs("a shoe", [b.uri, a.uri])),
        ("a-seed1", _with_refs("a shoe", [a.uri], seed=1)),
        ("a-seed2", _with_refs("a shoe", [a.uri], seed=2)),
    ]
    job = file_batch(client, tmp_path, rows)
    lines = {line["key"]: line for line in results(client, finish(emu, client, job.name), tmp_path)}
    images = {key: _final_image(line) for key, line in lines.items()}
    assert images["a"] == images["a-name"] == images["a-again"]  # bytes decide, not names
    distinct = ["plain", "a", "b", "ab", "ba", "a-seed1", "a-seed2"]
    assert len({images[k] for k in distinct}) == len(distinct)
    # Without references or a seed, the image is the one the emulator always made.
    alone = file_batch(client, tmp_path, [("plain", request("a shoe"))], name="alone")
    (line,) = results(client, finish(emu, client, alone.name), tmp_path)
    assert _final_image(line) == images["plain"]


def test_missing_and_expired_files_are_per_line_errors(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    a = _image_file(client, tmp_path, "a", PNG_A)
    gone = _image_file(client, tmp_path, "gone", PNG_B)
    client.files.delete(name=gone.name)
    rows = [
        ("ok", _with_refs("x", [a.uri])),
        ("gone", _with_refs("x", [gone.uri])),
        ("never", _with_refs("x", ["https://generativelanguage.googleapis.com/v1beta/files/nope"])),
    ]
    job = file_batch(client, tmp_path, rows)
    lines = {line["key"]: line for line in results(client, finish(emu, client, job.name), tmp_path)}
    assert "response" in lines["ok"]
    gone_id = gone.name.removeprefix("files/")
    assert lines["gone"]["error"] == {
        "code": 7,
        "message": f"You do not have permission to access the File {gone_id} or it may not exist.",
    }
    assert lines["never"]["error"]["code"] == 7 and "nope" in lines["never"]["error"]["message"]


def test_a_file_that_expires_before_the_batch_runs_fails_the_line(tmp_path: Path) -> None:
    """Files live 48 h; a batch that starts running after that gets the per-line error."""
    from google import genai

    with Emulator(image_scale=0.02, pending_seconds=25 * 3600, running_seconds=60) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        a = _image_file(client, tmp_path, "a", PNG_A)
        emu.clock.advance(24 * 3600)  # 24 h to live, then 25 h pending: gone when it runs
        job = file_batch(client, tmp_path, [("late", _with_refs("x", [a.uri]))])
        emu.clock.advance(26 * 3600)
        done = client.batches.get(name=job.name)
        (line,) = results(client, done, tmp_path)
        assert line["error"]["code"] == 7


@pytest.mark.parametrize(("model", "per_image"), [(PRO, 560), (FLASH25, 258), (FLASH31, 1120)])
def test_input_image_tokens_per_model(
    emu: Emulator, client: Any, tmp_path: Path, model: str, per_image: int
) -> None:
    a = _image_file(client, tmp_path, "a", PNG_A)
    b = _image_file(client, tmp_path, "b", PNG_B)
    req = _with_refs("abcd", [a.uri, b.uri])
    if model == FLASH25:
        del req["generationConfig"]["imageConfig"]["imageSize"]
    job = file_batch(client, tmp_path, [("k", req)], model=model)
    (line,) = results(client, finish(emu, client, job.name), tmp_path)
    usage = line["response"]["usageMetadata"]
    assert usage["promptTokenCount"] == 1 + 2 * per_image
    assert {"modality": "IMAGE", "tokenCount": 2 * per_image} in usage["promptTokensDetails"]
