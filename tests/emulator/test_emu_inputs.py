"""What a line names must be readable: fileData must name a live file uploaded here, inline
images must decode; maxOutputTokens too small for the image ends the candidate with MAX_TOKENS
and no image."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from emu_helpers import FLASH25, PRO, line_results, request

from pipeline.emulator import Emulator
from pipeline.emulator.png import make_png

PNG_BYTES = make_png("reference", 16, 16)


def _with_parts(*parts: dict[str, Any], size: str | None = "1K") -> dict[str, Any]:
    req = request("edit this", "1:1", size)
    req["contents"][0]["parts"] += list(parts)
    return req


def _file_part(uri: str) -> dict[str, Any]:
    return {"fileData": {"mimeType": "image/png", "fileUri": uri}}


def _upload_png(client: Any, tmp: Path, name: str) -> Any:
    path = tmp / f"{name}.png"
    path.write_bytes(PNG_BYTES)
    return client.files.upload(file=str(path), config={"mime_type": "image/png"})


def test_file_data_must_name_a_live_file_uploaded_here(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    live = _upload_png(client, tmp_path, "live")
    gone = _upload_png(client, tmp_path, "gone")
    client.files.delete(name=gone.name)
    assert live.uri is not None and gone.uri is not None
    foreign = "https://generativelanguage.googleapis.com/v1beta/files/abc123xyz"
    rows = [
        {"key": "live", "request": _with_parts(_file_part(live.uri))},
        {"key": "deleted", "request": _with_parts(_file_part(gone.uri))},
        {"key": "not-here", "request": _with_parts(_file_part(foreign))},
        {"key": "gcs", "request": _with_parts(_file_part("gs://bucket/cat.png"))},
    ]
    out = line_results(emu, client, tmp_path, rows)
    usage = out["live"]["response"]["usageMetadata"]
    assert {"modality": "IMAGE", "tokenCount": 560} in usage["promptTokensDetails"]
    gone_id = gone.name.removeprefix("files/")
    assert out["deleted"]["error"] == {
        "code": 7,
        "message": f"You do not have permission to access the File {gone_id} or it may not exist.",
    }
    assert out["not-here"]["error"]["code"] == 7
    assert "File abc123xyz " in out["not-here"]["error"]["message"]
    assert out["gcs"]["error"] == {
        "code": 3,
        "message": "Invalid or unsupported file uri: gs://bucket/cat.png",
    }


def test_file_data_naming_an_expired_file_fails(emu: Emulator, client: Any, tmp_path: Path) -> None:
    old = _upload_png(client, tmp_path, "old")
    emu.clock.advance(48 * 3600)  # uploaded files live 48 h
    rows = [{"key": "k", "request": _with_parts(_file_part(old.uri))}]
    out = line_results(emu, client, tmp_path, rows)
    assert out["k"]["error"]["code"] == 7
    assert old.name.removeprefix("files/") in out["k"]["error"]["message"]


def test_inline_images_must_decode(emu: Emulator, client: Any, tmp_path: Path) -> None:
    png = base64.b64encode(PNG_BYTES).decode("ascii")
    not_image = base64.b64encode(b"this is not a picture").decode("ascii")
    rows = [
        {
            "key": "png",
            "request": _with_parts({"inlineData": {"mimeType": "image/png", "data": png}}),
        },
        {
            "key": "url-safe-no-padding",
            "request": _with_parts(
                {"inlineData": {"mimeType": "image/png", "data": png.rstrip("=")}}
            ),
        },
        {
            "key": "not-an-image",
            "request": _with_parts({"inlineData": {"mimeType": "image/jpeg", "data": not_image}}),
        },
        {
            "key": "truncated",
            "request": _with_parts(
                {"inlineData": {"mimeType": "image/png", "data": png[: len(png) // 2 // 4 * 4]}}
            ),
        },
        {
            "key": "text-blob",
            "request": _with_parts({"inlineData": {"mimeType": "text/plain", "data": not_image}}),
        },
    ]
    out = line_results(emu, client, tmp_path, rows)
    assert "response" in out["png"] and "response" in out["url-safe-no-padding"]
    assert "response" in out["text-blob"]  # only images are looked into
    for key in ("not-an-image", "truncated"):
        assert out[key]["error"] == {"code": 3, "message": "Provided image is not valid"}, key


def _parts(line: dict[str, Any]) -> list[dict[str, Any]]:
    return line["response"]["candidates"][0].get("content", {}).get("parts", [])


def test_max_output_tokens_too_small_for_the_image(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    def capped(cap: int, size: str | None = "1K") -> dict[str, Any]:
        req = request("a lighthouse", "1:1", size)
        req["generationConfig"]["maxOutputTokens"] = cap
        return req

    rows = [
        {"key": "pro-100", "request": capped(100)},
        {"key": "pro-4k-1500", "request": capped(1500, "4K")},  # 4K needs 2000
        {"key": "pro-1k-1500", "request": capped(1500)},  # 1K needs 1120
    ]
    out = line_results(emu, client, tmp_path, rows)
    for key in ("pro-100", "pro-4k-1500"):
        cand = out[key]["response"]["candidates"][0]
        assert cand["finishReason"] == "MAX_TOKENS" and not _parts(out[key]), key
        usage = out[key]["response"]["usageMetadata"]
        assert "candidatesTokensDetails" not in usage
    assert out["pro-1k-1500"]["response"]["candidates"][0]["finishReason"] == "STOP"
    assert any("inlineData" in p for p in _parts(out["pro-1k-1500"]))
    out = line_results(
        emu, client, tmp_path, [{"key": "f", "request": capped(1289, None)}], FLASH25, "flash"
    )
    assert out["f"]["response"]["candidates"][0]["finishReason"] == "MAX_TOKENS"


def test_model_version_is_the_batch_model(emu: Emulator, client: Any, tmp_path: Path) -> None:
    out = line_results(emu, client, tmp_path, [{"key": "k", "request": request("x")}])
    assert out["k"]["response"]["modelVersion"] == PRO
