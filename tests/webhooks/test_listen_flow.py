"""`listen` end to end with the emulator delivering (CONTRACT section 11): it answers before
the work, a burst beyond its bounded queue is acknowledged and done later, and batches that
end are polled, harvested and their failures resubmitted with no tick at all, exactly once,
through duplicated, delayed, reordered and badly signed deliveries, for static (HMAC) and
dynamic (JWT) webhooks."""

from __future__ import annotations

import threading
from typing import Any

import httpx2
from faults_helpers import Drill, check_exactly_once
from google import genai
from keys import SECRET, body, hmac_headers
from live import live_listen, wait_for

from pipeline.emulator import LineFault, WebhookFaults


def _register(drill: Drill, url: str) -> str:
    """A static webhook for the batch events at `url`, through the SDK; its secret."""
    client = genai.Client(api_key="k", http_options={"base_url": drill.emu.url})
    made = client.webhooks.create(
        uri=url,
        subscribed_events=["batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"],
    )
    return str(made.new_signing_secret)


def _finished(drill: Drill, run: str) -> bool:
    return drill.run_state(run) == "finished"


def test_ack_does_not_wait_for_the_work(drill: Drill) -> None:
    """The answer (202) comes while the batch's move is still blocked in a worker."""
    drill.write_spec(2, per_batch=2)
    drill.submit()
    remote = drill.query("SELECT remote_name FROM batches")[0][0]
    started, release = threading.Event(), threading.Event()
    moved: list[str] = []

    def mover(ctx: Any, catalog: Any, name: str) -> str:
        started.set()
        release.wait(30)
        moved.append(name)
        return "batch done"

    with live_listen(drill, (SECRET,), mover=mover) as live:
        raw = body(remote)
        response = httpx2.post(live.url, content=raw, headers=hmac_headers(raw), timeout=10)
        assert response.status_code == 202
        assert started.wait(10)
        assert moved == []
        assert drill.query("SELECT state FROM deliveries")[0][0] == "queued"
        release.set()
        assert wait_for(lambda: drill.query("SELECT state FROM deliveries")[0][0] == "done")
    assert moved == [remote]


def test_burst_beyond_the_queue_is_acknowledged_and_done_later(drill: Drill) -> None:
    """Queue of 1, one worker held: 5 deliveries are all acknowledged, at most one batch
    waits in memory, the rest wait in the ledger and are moved once the worker is free."""
    drill.write_spec(5, per_batch=1)
    drill.submit()
    remotes = [r[0] for r in drill.query("SELECT remote_name FROM batches ORDER BY id")]
    release = threading.Event()
    moved: list[str] = []

    def mover(ctx: Any, catalog: Any, name: str) -> str:
        release.wait(30)
        moved.append(name)
        return "batch done"

    with live_listen(drill, (SECRET,), mover=mover, workers=1, queue_size=1) as live:
        live.receiver.refill_s, live.receiver.refill_after_s = 0.1, 0.0
        for i, remote in enumerate(remotes):
            raw = body(remote)
            headers = hmac_headers(raw, msg_id=f"msg_{i}")
            assert httpx2.post(live.url, content=raw, headers=headers).status_code == 202
        assert live.receiver.queue_depth <= 1
        assert live.receiver.counters["queue_full"] >= 1
        release.set()
        done = wait_for(
            lambda: drill.query("SELECT count(*) FROM deliveries WHERE state = 'done'")[0][0] == 5
        )
        assert done
    assert set(moved) == set(remotes)


def test_static_webhooks_harvest_every_batch_without_a_tick(drill: Drill) -> None:
    """After submit, no tick runs: the emulator's deliveries alone (each sent twice, delayed,
    reordered, the first with a bad signature) get every batch polled and harvested, once,
    and the run finished."""
    drill.emu.faults.webhooks = WebhookFaults(
        duplicates=1, delay_seconds=0.2, reorder=True, reorder_window_seconds=0.3, bad_signature=1
    )
    drill.write_spec(6, per_batch=2)
    with live_listen(drill, ()) as live:
        secret = _register(drill, live.url)
        live.receiver.verifier = _with_secret(live, secret)
        run = drill.submit()
        assert wait_for(lambda: _finished(drill, run), timeout=60), drill.items()
    check_exactly_once(drill, run, 6)
    rows = drill.query("SELECT state, detail, batch_id FROM deliveries")
    assert len(rows) == 3
    assert {(r.state, r.detail) for r in rows} == {("done", "batch harvested")}
    statuses = [e["status"] for e in drill.emu.webhooks.log]
    assert statuses.count(401) == 1
    assert statuses.count(202) + statuses.count(200) >= 6


def test_failed_lines_are_resubmitted_by_listen(drill: Drill) -> None:
    """A line that fails once goes back to the queue and into a new batch that listen creates
    (under the scheduler lease), whose own delivery gets it harvested."""
    drill.emu.faults.line_faults = [LineFault(kind="error", code=13, keys=["img-1"], times=1)]
    drill.write_spec(4, per_batch=2)
    with live_listen(drill, ()) as live:
        secret = _register(drill, live.url)
        live.receiver.verifier = _with_secret(live, secret)
        run = drill.submit()
        assert wait_for(lambda: _finished(drill, run), timeout=60), drill.items()
    items = drill.items()
    assert {r.state for r in items.values()} == {"succeeded"}
    assert items["img-1"].tries == 2
    assert drill.query("SELECT count(*) FROM batches")[0][0] == 3
    assert len(drill.creates()) == 3


def test_dynamic_webhook_of_the_spec_is_verified_by_the_jwks(drill: Drill) -> None:
    """`[notify] webhook_url` makes each batch carry its own webhook; the emulator signs its
    deliveries with a JWT, which listen checks against the emulator's JWKS (no secret set)."""
    with live_listen(drill, ()) as live:
        spec = drill.write_spec(4, per_batch=2)
        spec.write_text(spec.read_text() + f'[notify]\nwebhook_url = "{live.url}"\n')
        run = drill.submit()
        assert wait_for(lambda: _finished(drill, run), timeout=60), drill.items()
    check_exactly_once(drill, run, 4)
    assert {e["scheme"] for e in drill.emu.webhooks.log} == {"jwt"}
    assert {r[0] for r in drill.query("SELECT scheme FROM deliveries")} == {"jwt"}
    creates = [e for e in drill.emu.request_log if e.get("kind") == "create"]
    assert len(creates) == 2


def _with_secret(live: Any, secret: str) -> Any:
    """The live receiver's verifier, now holding the secret `webhooks create` returned."""
    from pipeline.adapters.delivery import JwksCache, Verifier
    from pipeline.shell.listen import _audiences, jwks_url

    return Verifier((secret,), JwksCache(jwks_url(live.ctx)), _audiences(live.ctx))
