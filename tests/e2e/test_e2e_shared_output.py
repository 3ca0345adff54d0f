"""Issue 13 item 2 as a user meets it: `alice.toml` and `bob.toml` both with
`uri = "out/shared"` and the same keys, run one after the other through the CLI."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def test_two_specs_sharing_out_shared_through_the_cli(e2e_db: Any) -> None:
    """Alice's manifest rows and rejects survive Bob's run; Bob's items, whose names Alice's
    images hold, fail before any request (no cost), so `run` exits 3 and status counts them."""
    e2e = e2e_db
    alice = e2e.write_spec(name="alice", output="out/shared", path=e2e.tmp / "alice.toml")
    bob = e2e.write_spec(
        name="bob",
        output="out/shared",
        path=e2e.tmp / "bob.toml",
        prompt="Sketch of {title}, {colour}",
    )
    first = e2e.run("--json", spec=alice)
    assert first.code == 0, first.stderr
    alice_run = first.json()["run"]
    lines_before = len([e for e in e2e.emu.request_log if e.get("kind") == "line"])

    second = e2e.run("--json", spec=bob)
    assert second.code == 3, second.stderr
    report = second.json()
    bob_run = report["run"]
    assert report["summary"]["failed"] == 4 and report["summary"]["cost_usd"] == 0
    for item in report["items"]:
        assert item["attempts"] == 0 and item["uri"] is None
        assert str(e2e.tmp / "out" / "shared" / f"{item['key']}.png") in item["error"]
    assert len([e for e in e2e.emu.request_log if e.get("kind") == "line"]) == lines_before
    status = e2e.invoke("status", bob_run, "--json").json()["runs"][0]
    assert status["items"]["failed"] == 4 and status["state"] == "finished"

    shared = e2e.tmp / "out" / "shared"
    merged = pq.read_table(shared / "manifest.parquet").to_pylist()
    assert sorted({(r["run"], r["status"]) for r in merged}) == [
        (alice_run, "succeeded"),
        (bob_run, "failed"),
    ]
    assert len(merged) == 8
    with (shared / "rejects.csv").open(newline="", encoding="utf-8") as fh:
        rejects = list(csv.reader(fh))
    assert rejects[0] == ["row", "key", "reason", "run"]
    assert sorted((r[1], r[3]) for r in rejects[1:]) == [
        ("stool-202", alice_run),
        ("stool-202", bob_run),
    ]
    own = pq.read_table(Path(shared / f"manifest-{alice_run}.parquet")).to_pylist()
    assert {r["status"] for r in own} == {"succeeded"} and len(own) == 4
