"""wire.get_to_file: a plain GET into a file in big blocks; a status other than 200 is a
StatusError, a body cut short is BrokenOff; a proxy in the environment goes through httpx."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.adapters import wire

BODY = bytes(range(256)) * 40_000  # ~10 MB: more than one block


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/ok"):
            assert self.headers["x-key"] == "k" and "alt=media" in self.path
            self._send(200, BODY, len(BODY))
        elif self.path.startswith("/short"):
            self._send(200, BODY[:1000], len(BODY))
            self.close_connection = True
        elif self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (BODY[:5], BODY[5:70_000], BODY[70_000:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(503, b"try later", 9)

    def _send(self, status: int, body: bytes, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_whole_body_in_the_file(url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wire, "BLOCK", 1 << 20)
    dest = tmp_path / "out"
    assert wire.get_to_file(f"{url}/ok", {"alt": "media"}, {"x-key": "k"}, dest) == len(BODY)
    assert dest.read_bytes() == BODY


def test_chunked_body(url: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert wire.get_to_file(f"{url}/chunked", {}, {}, dest) == len(BODY)
    assert dest.read_bytes() == BODY


def test_status_and_short_body(url: str, tmp_path: Path) -> None:
    with pytest.raises(wire.StatusError) as caught:
        wire.get_to_file(f"{url}/busy", {}, {}, tmp_path / "a")
    assert caught.value.status == 503 and caught.value.text == "try later"
    with pytest.raises(wire.BrokenOff, match="1000 of"):
        wire.get_to_file(f"{url}/short", {}, {}, tmp_path / "b")


def test_a_proxy_goes_through_httpx(url: str, tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "")

    def fake(u: str, params: dict[str, str], headers: dict[str, str], dest: Path) -> int:
        calls.append(u)
        return 0

    monkeypatch.setattr(wire, "_httpx_get", fake)
    assert wire.get_to_file(f"{url}/ok", {}, {}, tmp_path / "c") == 0
    assert calls == [f"{url}/ok"]
