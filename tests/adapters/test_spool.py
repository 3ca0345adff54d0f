"""The results spool: whole lines of a file read in blocks, while another thread is still
writing it; the complete file kept under its final name; a failed download raises."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pipeline.adapters import spool


def _writer(chunks: list[bytes], release: threading.Event | None = None):
    def download(part: Path) -> int:
        with part.open("ab") as fh:
            for chunk in chunks:
                fh.write(chunk)
                fh.flush()
                if release is not None:
                    release.wait(0.01)
        return sum(len(c) for c in chunks)

    return download


def test_lines_of_a_growing_file_in_small_blocks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(spool, "BLOCK", 7)  # lines longer than a block, cut anywhere
    lines = [b"a" * 20 + b"\n", b"\n", b"bc\n", b"d" * 6 + b"\n", b"last-no-newline"]
    data = b"".join(lines)
    chunks = [data[i : i + 5] for i in range(0, len(data), 5)]
    s = spool.ResultsSpool(tmp_path / "spool", "nb-x-00001", _writer(chunks, threading.Event()))
    assert [bytes(span) for span in s.lines()] == lines
    assert s.path.read_bytes() == data
    assert not s.part.exists()
    # A complete spool is read again without a download.
    again = spool.ResultsSpool(tmp_path / "spool", "nb-x-00001", _boom)
    assert [bytes(span) for span in again.lines()] == lines
    assert spool.results_files(tmp_path / "spool") == {"nb-x-00001": s.path}
    again.remove()
    assert not s.path.exists()


def _boom(part: Path) -> int:
    with part.open("ab") as fh:
        fh.write(b'{"key": "a"}\n{"key": "b", "trunc')
    raise ConnectionError("broke off")


def test_a_failed_download_raises_and_keeps_no_partial_line(tmp_path: Path) -> None:
    s = spool.ResultsSpool(tmp_path / "spool", "nb-x-00002", _boom)
    got: list[bytes] = []
    with pytest.raises(ConnectionError):
        for line in s.lines():
            got.append(bytes(line))
    assert got == [b'{"key": "a"}\n']
    assert not s.path.exists()


def test_fetch_downloads_once(tmp_path: Path) -> None:
    calls: list[Path] = []

    def download(part: Path) -> int:
        calls.append(part)
        part.write_bytes(b"x\n")
        return 2

    s = spool.ResultsSpool(tmp_path / "spool", "nb-x-00003", download)
    assert s.fetch() is True
    assert s.fetch() is False
    assert len(calls) == 1 and s.path.read_bytes() == b"x\n"
