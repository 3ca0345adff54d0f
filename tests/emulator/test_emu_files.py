"""Files API through the real SDK: resumable upload, get, list paging, delete, expiry, limits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors

from pipeline.emulator import Emulator


def test_small_upload_get_delete(emu: Emulator, client: Any, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"key": "a", "request": {}}\n')
    f = client.files.upload(file=str(src), config={"mime_type": "jsonl", "display_name": "in"})
    assert f.name.startswith("files/") and len(f.name) == len("files/") + 12
    assert all(c.isdigit() or c.islower() for c in f.name[6:])
    assert f.size_bytes == src.stat().st_size and f.mime_type == "jsonl"
    assert f.state.name == "ACTIVE" and f.source.name == "UPLOADED"
    assert f.display_name == "in"
    assert (f.expiration_time - f.create_time).total_seconds() == 48 * 3600
    got = client.files.get(name=f.name)
    assert got.sha256_hash == f.sha256_hash and got.size_bytes == f.size_bytes
    client.files.delete(name=f.name)
    with pytest.raises(errors.ClientError) as exc:
        client.files.get(name=f.name)
    assert exc.value.code == 403 and exc.value.status == "PERMISSION_DENIED"
    kinds = [e["kind"] for e in emu.request_log]
    assert kinds[:2] == ["upload_start", "upload_chunk"]
    assert "file_get" in kinds and "file_delete" in kinds


def test_large_upload_in_chunks(emu: Emulator, client: Any, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024 + 123)
    src.write_bytes(data)
    f = client.files.upload(file=str(src), config={"mime_type": "application/octet-stream"})
    assert f.size_bytes == len(data)
    chunks = [e for e in emu.request_log if e["kind"] == "upload_chunk"]
    assert len(chunks) == 2 and all(e["status"] == 200 for e in chunks)
    stored = emu.data_dir / "files" / f.name.removeprefix("files/")
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_list_paging(emu: Emulator, client: Any, tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    src.write_text("{}\n")
    names = {
        client.files.upload(file=str(src), config={"mime_type": "jsonl"}).name for _ in range(5)
    }
    listed = list(client.files.list(config={"page_size": 2}))
    assert {f.name for f in listed} == names
    pages = [e for e in emu.request_log if e["kind"] == "file_list"]
    assert len(pages) == 3


def test_files_expire_after_48_hours(emu: Emulator, client: Any, tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    src.write_text("{}\n")
    f = client.files.upload(file=str(src), config={"mime_type": "jsonl"})
    emu.clock.advance(47 * 3600)
    assert client.files.get(name=f.name).name == f.name
    emu.clock.advance(3600 + 1)
    with pytest.raises(errors.ClientError) as exc:
        client.files.get(name=f.name)
    assert exc.value.code == 403
    assert "do not have permission" in exc.value.message
    assert list(client.files.list()) == []


def test_uploaded_file_cannot_be_downloaded(client: Any, tmp_path: Path) -> None:
    src = tmp_path / "x.jsonl"
    src.write_text("{}\n")
    f = client.files.upload(file=str(src), config={"mime_type": "jsonl"})
    with pytest.raises(errors.ClientError) as exc:
        client.files.download(file=f.name)
    assert exc.value.code == 400


def test_file_size_and_storage_limits(tmp_path: Path) -> None:
    with Emulator(max_file_bytes=1000, max_storage_bytes=1500) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        big = tmp_path / "big.jsonl"
        big.write_bytes(b"x" * 1001)
        with pytest.raises(errors.ClientError) as exc:
            client.files.upload(file=str(big), config={"mime_type": "jsonl"})
        assert exc.value.code == 400 and exc.value.status == "INVALID_ARGUMENT"
        ok = tmp_path / "ok.jsonl"
        ok.write_bytes(b"x" * 800)
        client.files.upload(file=str(ok), config={"mime_type": "jsonl"})
        with pytest.raises(errors.ClientError) as exc:
            client.files.upload(file=str(ok), config={"mime_type": "jsonl"})
        assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"


def test_chunk_with_wrong_offset_is_refused(emu: Emulator) -> None:
    import httpx2

    start = httpx2.post(
        f"{emu.url}/upload/v1beta/files",
        headers={"x-goog-api-key": "k", "X-Goog-Upload-Header-Content-Length": "4"},
        json={"file": {"display_name": "d", "mime_type": "jsonl", "size_bytes": 4}},
    )
    url = start.headers["X-Goog-Upload-URL"]
    assert url.startswith(emu.url + "/upload/v1beta/files?upload_id=")
    bad = httpx2.post(
        url,
        content=b"abcd",
        headers={"X-Goog-Upload-Offset": "2", "X-Goog-Upload-Command": "upload, finalize"},
    )
    assert bad.status_code == 400
    good = httpx2.post(
        url,
        content=b"abcd",
        headers={"X-Goog-Upload-Offset": "0", "X-Goog-Upload-Command": "upload, finalize"},
    )
    assert good.status_code == 200 and good.headers["x-goog-upload-status"] == "final"
    assert good.json()["file"]["sizeBytes"] == "4"


def test_limit_crossed_mid_upload_fails_fast(tmp_path: Path) -> None:
    import io
    import time

    with Emulator(max_file_bytes=9 * 1024 * 1024) as emu:
        client = genai.Client(api_key="k", http_options={"base_url": emu.url})
        data = io.BytesIO(b"x" * (10 * 1024 * 1024))
        start = time.perf_counter()
        with pytest.raises(errors.APIError) as exc:
            client.files.upload(file=data, config={"mime_type": "jsonl"})
        assert exc.value.code == 400
        assert time.perf_counter() - start < 1.0
