"""Big downloads straight from the socket to a file: a plain GET read in blocks of
megabytes with http.client, so a download thread asks for the interpreter once per block
(not once per 64 KiB as an httpx stream does, through h11 and a chunker) and is not starved
by the threads parsing what it wrote.

Falls back to an httpx stream when the environment names a proxy for the URL (http.client
knows no proxies). TLS uses the same default context as httpx (certifi or SSL_CERT_FILE).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode, urlsplit

import httpcore2
import httpx2

BLOCK = 8 << 20
"""Bytes per read: the socket buffer's worth on a fast link, few interpreter switches."""
TIMEOUT_S = 120.0


class StatusError(Exception):
    """The server answered with another status than 200."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text[:200]}")
        self.status, self.text = status, text


class BrokenOff(Exception):
    """The connection failed or ended before the whole body came."""


def get_to_file(url: str, params: dict[str, str], headers: dict[str, str], dest: Path) -> int:
    """GET `url` into `dest` (created or truncated); the number of bytes written.
    StatusError on a status other than 200, BrokenOff when the body is cut short."""
    full = f"{url}?{urlencode(params)}" if params else url
    if _proxied(full):
        return _httpx_get(url, params, headers, dest)
    parts = urlsplit(full)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = httpcore2.default_ssl_context(_trust_env=True)
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=TIMEOUT_S, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with dest.open("wb", buffering=0) as out:  # its OSErrors are the disk's: not caught
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                raise StatusError(response.status, response.read().decode("utf-8", "replace"))
            expected = None if response.chunked else response.length
            plain = expected is not None and not isinstance(conn.sock, ssl.SSLSocket)
            if plain and conn.sock is not None:
                written = _copy_waitall(response, conn.sock, expected or 0, out)
            else:
                written = _copy(response, out)
        except _WriteFailed as exc:
            raise exc.error from None
        except (OSError, http.client.HTTPException) as exc:
            raise BrokenOff(str(exc) or type(exc).__name__) from exc
        finally:
            conn.close()
    if expected is not None and written != expected:
        raise BrokenOff(f"{written} of {expected} bytes")
    return written


class _WriteFailed(Exception):
    def __init__(self, error: OSError) -> None:
        self.error = error


def _copy(response: http.client.HTTPResponse, out: BinaryIO) -> int:
    """TLS or chunked bodies: http.client reads (one interpreter switch per TLS record)."""
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    written = 0
    while n := response.readinto(buffer):
        _write(out, view[:n])
        written += n
    return written


def _copy_waitall(
    response: http.client.HTTPResponse, sock: socket.socket, length: int, out: BinaryIO
) -> int:
    """A plain body of known length straight from the socket: recv with MSG_WAITALL fills a
    whole block in the kernel, so the thread takes the interpreter once per block, not
    once per segment (under a parser's load each take waits up to the switch interval).
    The socket is made blocking, with SO_RCVTIMEO as the stall timeout."""
    first = response.fp.read1(min(length, BLOCK)) if length else b""  # what http.client buffered
    _write(out, memoryview(first))
    written = len(first)
    sock.settimeout(None)
    seconds = int(TIMEOUT_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, 0))
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    while written < length:
        n = sock.recv_into(view, min(BLOCK, length - written), socket.MSG_WAITALL)
        if n == 0:
            break  # closed early: the caller compares the length
        _write(out, view[:n])
        written += n
    return written


def _write(out: BinaryIO, data: memoryview) -> None:
    done = 0
    try:
        while done < len(data):  # a raw write may take less than it is given
            done += out.write(data[done:]) or 0
    except OSError as exc:
        raise _WriteFailed(exc) from exc


def _proxied(url: str) -> bool:
    scheme = urlsplit(url).scheme
    proxies = urllib.request.getproxies()
    if scheme not in proxies and "all" not in proxies:
        return False
    host = urlsplit(url).hostname or ""
    return not urllib.request.proxy_bypass(host)


def _httpx_get(url: str, params: dict[str, str], headers: dict[str, str], dest: Path) -> int:
    written = 0
    try:
        with (
            httpx2.stream("GET", url, params=params, headers=headers, timeout=TIMEOUT_S) as resp,
            dest.open("wb") as out,
        ):
            if resp.status_code != 200:
                resp.read()
                raise StatusError(resp.status_code, resp.text)
            for chunk in resp.iter_bytes(1 << 20):
                out.write(chunk)
                written += len(chunk)
    except httpx2.HTTPError as exc:
        raise BrokenOff(str(exc)) from exc
    return written
