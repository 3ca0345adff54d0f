"""Images and usage: real PNGs of the right size, thought images, tokens, per-line validation."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import FLASH25, FLASH31, PRO, file_batch, finish, request, results, upload
from PIL import Image

from pipeline.emulator import Emulator
from pipeline.emulator.png import make_png


def _images(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in response["candidates"][0]["content"]["parts"] if "inlineData" in p]


def _decode(part: dict[str, Any]) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(part["inlineData"]["data"])))
    im.load()
    return im


@pytest.mark.parametrize(
    ("model", "ratio", "size", "pixels"),
    [
        (PRO, "1:1", "1K", (1024, 1024)),
        (PRO, "16:9", "2K", (2752, 1536)),
        (PRO, "21:9", "4K", (6336, 2688)),
        (FLASH25, "9:16", None, (768, 1344)),
        (FLASH31, "3:2", "512", (632, 424)),
        (FLASH31, "1:4", "2K", (1024, 4096)),
    ],
)
def test_png_size_per_model_ratio_size(
    emu: Emulator,
    client: Any,
    tmp_path: Path,
    model: str,
    ratio: str,
    size: str | None,
    pixels: tuple[int, int],
) -> None:
    job = file_batch(client, tmp_path, [("k", request("a lighthouse", ratio, size))], model=model)
    (line,) = results(client, finish(emu, client, job.name), tmp_path)
    final = [p for p in _images(line["response"]) if not p.get("thought")][-1]
    im = _decode(final)
    assert im.format == "PNG" and im.mode == "RGB"
    assert im.size == (round(pixels[0] * 0.02), round(pixels[1] * 0.02))


def test_usage_metadata(emu: Emulator, client: Any, tmp_path: Path) -> None:
    prompt = "a watercolor fox in the snow"  # 28 bytes -> 7 tokens
    rows = [("pro", request(prompt, "1:1", "4K")), ("pro2", request(prompt, "1:1", "2K"))]
    job = file_batch(client, tmp_path, rows)
    out = {
        r["key"]: r["response"] for r in results(client, finish(emu, client, job.name), tmp_path)
    }
    for key, image_tokens in (("pro", 2000), ("pro2", 1120)):
        u = out[key]["usageMetadata"]
        assert u["promptTokenCount"] == 7
        assert u["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 7}]
        assert u["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": image_tokens}]
        assert 10 <= u["candidatesTokenCount"] - image_tokens <= 40
        assert 100 <= u["thoughtsTokenCount"] <= 300
        total = u["promptTokenCount"] + u["candidatesTokenCount"] + u["thoughtsTokenCount"]
        assert u["totalTokenCount"] == total
        assert out[key]["modelVersion"] == PRO and out[key]["responseId"]
    job = file_batch(client, tmp_path, [("f", request(prompt, size=None))], model=FLASH25, name="f")
    (line,) = results(client, finish(emu, client, job.name), tmp_path)
    u = line["response"]["usageMetadata"]
    assert u["candidatesTokensDetails"][0]["tokenCount"] == 1290 and "thoughtsTokenCount" not in u
    flash31 = {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}
    rows = [(s, request(prompt, "1:1", s)) for s in flash31]
    job = file_batch(client, tmp_path, rows, model=FLASH31, name="g")
    for line in results(client, finish(emu, client, job.name), tmp_path):
        details = line["response"]["usageMetadata"]["candidatesTokensDetails"]
        assert details[0]["tokenCount"] == flash31[line["key"]]


def test_pro_thought_image_before_final(emu: Emulator, client: Any, tmp_path: Path) -> None:
    rows = [(f"k{i}", request(f"prompt number {i}")) for i in range(12)]
    job = file_batch(client, tmp_path, rows)
    lines = results(client, finish(emu, client, job.name), tmp_path)
    with_thought = 0
    for line in lines:
        parts = line["response"]["candidates"][0]["content"]["parts"]
        flags = [bool(p.get("thought")) for p in parts if "inlineData" in p]
        assert flags[-1] is False and all(flags[:-1])
        assert "thoughtSignature" in parts[-1] and base64.b64decode(parts[-1]["thoughtSignature"])
        assert any("text" in p for p in parts)
        if len(flags) == 2:
            with_thought += 1
            assert parts.index(next(p for p in parts if p.get("thought"))) == 0
    assert 0 < with_thought < len(lines)


def test_same_prompt_same_bytes(emu: Emulator, client: Any, tmp_path: Path) -> None:
    rows = [("a", request("same")), ("b", request("same")), ("c", request("other"))]
    job = file_batch(client, tmp_path, rows)
    lines = results(client, finish(emu, client, job.name), tmp_path)
    data = [_images(x["response"])[-1]["inlineData"]["data"] for x in lines]
    assert data[0] == data[1] != data[2]


def test_per_line_validation(emu: Emulator, client: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    rows = [
        json.dumps({"key": "ratio", "request": request("x", "7:3")}),
        json.dumps({"key": "lower", "request": request("x", "1:1", "1k")}),
        json.dumps({"key": "only31", "request": request("x", "1:8", "1K")}),
        json.dumps({"key": "field", "request": {**request("x"), "thinking_config": {}}}),
        "{not json",
        json.dumps({"key": "fine", "request": request("x")}),
    ]
    src.write_text("\n".join(rows) + "\n")
    f = upload(client, src)
    job = client.batches.create(model=PRO, src=f.name, config={"display_name": "v"})
    lines = results(client, finish(emu, client, job.name), tmp_path)
    assert len(lines) == 6
    for line in lines[:5]:
        assert line["error"]["code"] == 3 and line["error"]["message"]
    assert "key" not in lines[4]
    assert lines[5]["key"] == "fine" and "response" in lines[5]
    stats = [e for e in emu.request_log if e["kind"] == "line"]
    assert [e["outcome"] for e in stats] == ["invalid"] * 5 + ["ok"]


def test_png_speed_full_size_2k() -> None:
    make_png("warm-up", 64, 64)
    start = time.perf_counter()
    data = make_png("a speed test prompt", 2048, 2048)
    elapsed = time.perf_counter() - start
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.size == (2048, 2048)
    assert elapsed < 0.2  # about 25 ms on the project's machine; generous for CI noise
