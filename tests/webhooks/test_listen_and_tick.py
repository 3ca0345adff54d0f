"""`listen` and cron ticks at once on PostgreSQL never do anything twice (CONTRACT section
11): the emulator delivers every end three times, reordered, while two `tick` processes run
again and again; some lines fail once, so listen and the ticks race to resubmit them too.
Every batch is created once, every results line served once, every transition happens once
and every image is stored and paid for once."""

from __future__ import annotations

from collections import Counter

import pytest
from faults_helpers import Drill, line_cost_nanos, sha256_file
from google import genai
from live import live_listen, wait_for

from pipeline.emulator import Emulator, LineFault, WebhookFaults


@pytest.mark.postgres
@pytest.mark.slow
def test_listen_and_ticks_together_never_do_anything_twice(tmp_path, pg_url: str) -> None:
    with Emulator(image_scale=0.02, pending_seconds=0.3, running_seconds=0.5) as emu:
        emu.webhooks.retry_base_s = 0.1
        emu.faults.webhooks = WebhookFaults(duplicates=2, reorder=True, reorder_window_seconds=0.2)
        emu.faults.line_faults = [
            LineFault(kind="error", code=13, keys=["img-2", "img-7"], times=1)
        ]
        drill = Drill(tmp_path, emu, pg_url)
        drill.write_spec(12, per_batch=2)
        with live_listen(drill, ()) as live:
            client = genai.Client(api_key="k", http_options={"base_url": emu.url})
            made = client.webhooks.create(
                uri=live.url, subscribed_events=["batch.succeeded", "batch.failed"]
            )
            from pipeline.adapters.delivery import JwksCache, Verifier
            from pipeline.shell.listen import _audiences, jwks_url

            live.receiver.verifier = Verifier(
                (str(made.new_signing_secret),), JwksCache(jwks_url(live.ctx)), _audiences(live.ctx)
            )
            run = drill.submit()

            def tick_wave() -> bool:
                procs = [drill.popen("tick") for _ in range(2)]
                for proc in procs:
                    _out, err = proc.communicate(timeout=120)
                    assert proc.returncode == 0, err[-3000:]
                    assert "Traceback" not in err, err[-3000:]
                return drill.run_state(run) == "finished"

            assert wait_for(tick_wave, timeout=120, every=0.0)
            # The last ends may be delivered after a tick finished the run: wait for them.
            count = "SELECT count(*) FROM deliveries WHERE state <> 'queued'"
            assert wait_for(lambda: drill.query(count)[0][0] == 8, timeout=30)
            assert live.receiver.counters["accepted"] == 8
        _check_once(drill, run)


def _check_once(drill: Drill, run: str) -> None:
    items = drill.items()
    assert {r.state for r in items.values()} == {"succeeded"}, items
    for key, row in items.items():
        assert sha256_file(drill.out_dir / f"{key}.png") == row.sha256
    # One create per ledger batch, one ledger batch per emulator batch.
    batches = drill.query("SELECT id, remote_name FROM batches")
    assert len(drill.creates()) == len(batches) == len(drill.emu.batches()) == 8
    # Every results line served once, and each retried key served in two batches only.
    served = [(e["batch"], e["key"]) for e in drill.emu.request_log if e.get("kind") == "line"]
    assert len(served) == len(set(served)) == 14
    # Each batch moved to done and to harvested exactly once.
    moves = Counter(
        (r.batch_id, r.from_state, r.to_state)
        for r in drill.query(
            "SELECT batch_id, from_state, to_state FROM events WHERE batch_id IS NOT NULL "
            "AND item_id IS NULL"
        )
    )
    for batch_id, _ in batches:
        assert moves[(batch_id, "running", "done")] == 1, moves
        assert moves[(batch_id, "done", "harvested")] == 1, moves
    assert max(moves.values()) == 1, moves
    # Paid once: recorded cost = the sum over served lines.
    expected = sum(line_cost_nanos(line) for line in drill.result_lines())
    assert sum(a.cost_nanos or 0 for a in drill.attempts()) == expected
    # Deliveries recorded once each (three copies of each end were sent).
    keys = [r[0] for r in drill.query("SELECT key FROM deliveries")]
    assert len(keys) == len(set(keys)) == len(batches)
    sent_ids = {e["id"] for e in drill.emu.webhooks.log}
    assert {k.removeprefix("id:") for k in keys} == sent_ids
