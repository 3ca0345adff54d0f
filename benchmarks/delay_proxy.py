"""A TCP proxy that holds every answer back `--delay-ms` before passing it on: put in front
of fake-gcs-server, each upload waits out a round trip as it would to a storage service
over a network, while the bytes sent flow at once. (tc netem would do it in the kernel, but
the machines this runs on may lack the module.) Run as its own process; prints
`listening on http://127.0.0.1:PORT` once it accepts connections.

    python -m benchmarks.delay_proxy --target 127.0.0.1:4443 --delay-ms 25
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

CHUNK = 1 << 20


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy until EOF; with a delay, each chunk goes out `delay_s` after it was read. An HTTP
    connection has one answer in flight at a time, so answers are never delayed twice."""
    try:
        while data := await reader.read(CHUNK):
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(target: tuple[str, int], delay_s: float) -> None:
    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        s_reader, s_writer = await asyncio.open_connection(*target)
        for w in (c_writer, s_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            _pipe(c_reader, s_writer, 0.0),  # requests (and their bodies) at once
            _pipe(s_reader, c_writer, delay_s),  # answers after the delay
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def running(target_url: str, delay_ms: float) -> Iterator[tuple[str, int | None]]:
    """(url to use, proxy pid): the proxy in front of `target_url`, or the target itself
    when `delay_ms` is 0."""
    if delay_ms <= 0:
        yield target_url, None
        return
    host_port = target_url.split("://", 1)[1]
    cmd = [sys.executable, "-m", "benchmarks.delay_proxy", "--target", host_port]
    proc = subprocess.Popen([*cmd, "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]  # printed once it accepts connections
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="host:port to pass connections to")
    p.add_argument("--delay-ms", type=float, required=True)
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve((host, int(port)), a.delay_ms / 1000))


if __name__ == "__main__":
    main()
