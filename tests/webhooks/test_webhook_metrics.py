"""The webhook metrics (issue 18): `nanobatch metrics` counts recorded deliveries by event and
state, and summarises each harvested batch's time from its end on the service to its last
image stored, split by whether a webhook named it first (via="webhook") or a poll found it
(via="poll"); `listen --metrics-out` writes the process's own counters."""

from __future__ import annotations

import re

from faults_helpers import Drill
from google import genai
from live import live_listen, wait_for

from pipeline.adapters.delivery import JwksCache, Verifier
from pipeline.shell.listen import MetricsWriter, _audiences, jwks_url


def _sample(text: str, name: str, **labels: str) -> float:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = r"(?m)^" + re.escape(f"{name}{{{inner}}}" if labels else name) + r" (\S+)"
    found = re.search(pattern, text)
    assert found, f"{name} {labels} not in:\n{text}"
    return float(found.group(1))


def test_end_to_stored_by_webhook_and_by_poll(drill: Drill, tmp_path) -> None:
    client = genai.Client(api_key="k", http_options={"base_url": drill.emu.url})
    drill.write_spec(4, per_batch=2, name="pushed")
    with live_listen(drill, ()) as live:
        made = client.webhooks.create(uri=live.url, subscribed_events=["batch.succeeded"])
        secret = str(made.new_signing_secret)
        live.receiver.verifier = Verifier(
            (secret,), JwksCache(jwks_url(live.ctx)), _audiences(live.ctx)
        )
        pushed = drill.submit()
        assert wait_for(lambda: drill.run_state(pushed) == "finished", timeout=60)
        writer = MetricsWriter(live.receiver, tmp_path / "listen.prom")
        writer.write()
    client.webhooks.delete(id=made.id)
    spec = drill.write_spec(2, per_batch=2, name="polled")
    spec.write_text(spec.read_text().replace('uri = "out"', 'uri = "out-polled"'))
    submitted = drill.cli("submit", str(spec), "--no-cache")  # the same prompts: not cached
    assert submitted.code == 0, submitted.err
    polled = submitted.out.strip()
    drill.tick_until_done(polled)

    text = drill.cli("metrics").out
    summary = "nanobatch_batch_end_to_stored_seconds"
    assert _sample(text, f"{summary}_count", via="webhook") == 2
    assert _sample(text, f"{summary}_count", via="poll") == 1
    assert _sample(text, summary, via="webhook", quantile="0.99") >= 0
    deliveries = "nanobatch_webhook_deliveries_total"
    assert _sample(text, deliveries, event="batch.succeeded", state="done") == 2
    assert drill.query("SELECT count(*) FROM batches WHERE ended_at IS NULL")[0][0] == 0

    own = (tmp_path / "listen.prom").read_text()
    assert _sample(own, "nanobatch_listen_deliveries_total", result="accepted") == 2
    assert _sample(own, "nanobatch_listen_refused_total", reason="bad_signature") == 0
    assert _sample(own, "nanobatch_listen_batches_moved_total") == 2
