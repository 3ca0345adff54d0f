"""The commands as a user runs them (subprocesses): `webhooks create` prints the secret alone
on stdout and the id on stderr, `list` and `delete` manage it; `listen` started with that
secret in NANOBATCH_WEBHOOK_SECRET harvests the run the emulator's deliveries announce, stops
cleanly on SIGTERM, and neither its logs nor the ledger ever hold the secret."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading

import pytest
from faults_helpers import Drill, check_exactly_once
from live import ledger_text, wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_listen(
    drill: Drill, secret: str, port: int
) -> tuple[subprocess.Popen[str], str, list[str]]:
    """`nanobatch listen` in a subprocess with the secret (after an unused one: rotation);
    its URL from the listen_started log line, and its stderr lines as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "listen", "--port", str(port), "--log-format", "json"],
        env=drill.env(NANOBATCH_WEBHOOK_SECRET=f"whsec_b2xkb2xkb2xkb2xkb2xk {secret}"),
        cwd=drill.tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    url = ""
    for line in proc.stderr:
        lines.append(line)
        if '"listen_started"' in line:
            url = json.loads(line)["url"]
            break
    assert url, "".join(lines)
    threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True).start()
    return proc, url, lines


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=40)
    if proc.stderr is not None:
        proc.stderr.close()
    return code


def test_webhooks_create_list_delete(drill: Drill) -> None:
    made = drill.sub("webhooks", "create", "--url", "https://hooks.example.test/gemini-webhook")
    assert made.code == 0, made.err
    secret = made.out.strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]+", secret)
    webhook_id = re.search(r"webhook (\S+)", made.err).group(1)  # type: ignore[union-attr]
    assert secret not in made.err
    listed = drill.sub("webhooks", "list", "--json")
    rows = json.loads(listed.out)["webhooks"]
    assert [(r["id"], r["uri"]) for r in rows] == [
        (webhook_id, "https://hooks.example.test/gemini-webhook")
    ]
    assert sorted(rows[0]["events"]) == [
        "batch.cancelled",
        "batch.expired",
        "batch.failed",
        "batch.succeeded",
    ]
    assert secret not in listed.out + listed.err
    assert drill.sub("webhooks", "delete", webhook_id).code == 0
    assert json.loads(drill.sub("webhooks", "list", "--json").out)["webhooks"] == []


def test_webhooks_create_leaves_out_an_event_the_service_refuses(drill: Drill) -> None:
    drill.emu.webhooks.refused_events = {"batch.cancelled"}
    made = drill.sub("webhooks", "create", "--url", "https://hooks.example.test/h")
    assert made.code == 0, made.err
    assert "refused batch.cancelled" in made.err
    events = json.loads(drill.sub("webhooks", "list", "--json").out)["webhooks"][0]["events"]
    assert sorted(events) == ["batch.expired", "batch.failed", "batch.succeeded"]


@pytest.mark.parametrize("url", ["http://hooks.example.test/h", "ftp://x/y", "not a url"])
def test_webhooks_create_refuses_plain_http(drill: Drill, url: str) -> None:
    made = drill.sub("webhooks", "create", "--url", url)
    assert made.code == 2
    assert "https" in made.err
    assert drill.emu.request_log == []


def test_listen_refuses_a_malformed_secret_without_showing_it(drill: Drill) -> None:
    bad = "not-a-whsec-secret-123"
    done = drill.sub("listen", "--port", "0", NANOBATCH_WEBHOOK_SECRET=f"whsec_b2xk {bad}")
    assert done.code == 2
    assert "secret 2 of 2" in done.err
    assert bad not in done.err + done.out


@pytest.mark.slow
def test_listen_process_harvests_and_never_shows_the_secret(drill: Drill) -> None:
    drill.write_spec(4, per_batch=2)
    port = _free_port()
    made = drill.sub("webhooks", "create", "--url", f"http://127.0.0.1:{port}/gemini-webhook")
    assert made.code == 0, made.err
    secret = made.out.strip()
    proc, _url, lines = _start_listen(drill, secret, port)
    try:
        run = drill.submit()
        finished = wait_for(lambda: drill.run_state(run) == "finished", timeout=60)
        assert finished, "".join(lines)[-3000:]
    finally:
        code = _stop(proc)
    assert code == 0, "".join(lines)[-3000:]
    check_exactly_once(drill, run, 4)
    logs = "".join(lines)
    assert '"webhook_received"' in logs and '"webhook_batch_moved"' in logs
    assert '"listen_stopped"' in logs
    for text in (logs, ledger_text(drill.db_url)):
        assert secret not in text
        assert secret.removeprefix("whsec_") not in text
