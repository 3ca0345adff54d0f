"""The request log holds each request before its answer leaves: a client that reads the log
right after its call finds the entry, however loaded the machine (logged after the send, a
client once read the log first, tests/emulator/test_emu_vertex.py)."""

from __future__ import annotations

from typing import Any

import pytest
from emu_helpers import http

from pipeline.emulator import Emulator
from pipeline.emulator.server import Handler


def test_each_request_is_logged_with_its_status_before_the_answer_is_sent(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At the moment the status line goes out, the request's entry must already be logged.
    seen: list[tuple[int, Any]] = []
    send = Handler.send_response

    def watched(self: Handler, code: int, message: str | None = None) -> None:
        logged = [e for e in emu.request_log if e is self._entry]
        seen.append((code, logged[0]["status"] if logged else "not logged"))
        send(self, code, message)

    monkeypatch.setattr(Handler, "send_response", watched)
    assert http(emu, "GET", "/v1beta/batches")[0] == 200
    assert http(emu, "GET", "/v1beta/batches/no-such-batch")[0] == 404
    assert http(emu, "GET", "/v1beta/batches", key="")[0] == 403
    assert seen == [(200, 200), (404, 404), (403, 403)]
    assert [e["status"] for e in emu.request_log] == [200, 404, 403]
