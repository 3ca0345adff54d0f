"""The fault and crash drills on the Vertex AI channel: a Drill whose spec says
`[channel] kind = "vertex"`, with the emulator's batch prediction routes (GOOGLE_VERTEX_BASE_URL,
no credentials: a placeholder token) and fake-gcs-server (STORAGE_EMULATOR_HOST) for the
request files and predictions; and the exactly-once checks against the emulator's own
prediction lines in GCS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faults_helpers import Drill, line_cost_nanos, sha256_file
from google.cloud import storage

PROJECT, LOCATION = "demo-proj", "us-central1"


@dataclass
class VertexDrill(Drill):
    bucket: str = ""
    gcs_url: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        env = super().env()
        env.update(
            GOOGLE_VERTEX_BASE_URL=self.emu.url,
            STORAGE_EMULATOR_HOST=self.gcs_url,
            GOOGLE_CLOUD_PROJECT="nanobatch-test",
        )
        env.update(extra)
        return env

    def write_spec(self, n: int = 6, **options: Any) -> Path:
        path = super().write_spec(n, **options)
        staging = f"gs://{self.bucket}/staging"
        path.write_text(
            path.read_text(encoding="utf-8")
            + f'[channel]\nkind = "vertex"\nproject = "{PROJECT}"\nlocation = "{LOCATION}"\n'
            f'staging_uri = "{staging}"\n',
            encoding="utf-8",
        )
        return path

    # ── the emulator's side ─────────────────────────────────────────────────

    def jobs(self) -> list[dict[str, Any]]:
        return self.emu.vertex_jobs()

    def creates(self) -> list[dict[str, Any]]:
        """Creates that took effect (answered, or answered and lost)."""
        return [
            e
            for e in self.emu.request_log
            if e.get("kind") == "vertex_create" and e.get("status") in (200, "lost")
        ]

    def result_lines(self) -> Iterator[dict[str, Any]]:
        """Every prediction line of every job, from GCS (files in name order)."""
        client = storage.Client(project="nanobatch-test")
        for job in self.jobs():
            if not job["outputDir"]:
                continue
            bucket, _, prefix = job["outputDir"].removeprefix("gs://").partition("/")
            blobs = sorted(client.list_blobs(bucket, prefix=prefix + "/"), key=lambda b: b.name)
            for blob in blobs:
                for raw in blob.download_as_bytes().splitlines():
                    if raw.strip():
                        yield json.loads(raw)

    def served(self) -> list[tuple[str, str]]:
        """(job, key) of each line the emulator predicted (duplicates and lines a fault left
        out not included)."""
        return [
            (e["job"], e["key"])
            for e in self.emu.request_log
            if e.get("kind") == "vertex_line"
            and e["outcome"] != "missing"
            and not e["outcome"].startswith("duplicate")
        ]


def check_vertex_exactly_once(drill: VertexDrill, run: str, n: int) -> None:
    """Every item succeeded once, its image stored once with the bytes recorded; one job per
    shard (never two with a display name); each line predicted once; the report's cost is
    the sum of the prediction lines' costs."""
    items = drill.items()
    assert len(items) == n
    assert {r.state for r in items.values()} == {"succeeded"}, items
    files = sorted(p.name for p in drill.out_dir.iterdir())
    assert sorted(f for f in files if f.endswith(".png")) == sorted(f"{k}.png" for k in items)
    assert not [f for f in files if f.startswith(".") or f.endswith((".tmp", ".part"))], files
    for key, row in items.items():
        assert sha256_file(drill.out_dir / f"{key}.png") == row.sha256
    spool = drill.tmp / "state" / "spool"
    assert not spool.exists() or not list(spool.iterdir()), list(spool.iterdir())
    names = [j["displayName"] for j in drill.jobs()]
    assert len(names) == len(set(names)), names
    assert len(drill.creates()) == len(names)
    served = drill.served()
    assert len(served) == len(set(served)) == n, served
    expected = sum(line_cost_nanos(line) for line in drill.result_lines())
    report = drill.report(run)
    assert round(report["summary"]["cost_usd"], 9) == round(expected / 1e9, 9)
    assert sum(a.cost_nanos or 0 for a in drill.attempts()) == expected
    assert report["summary"]["succeeded"] == n
