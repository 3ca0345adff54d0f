"""Kill drills around reference image uploads: `nanobatch run` SIGKILLed before an upload is
sent, after it was sent but before it was recorded, and around the batch's own upload; plain
ticks then finish the run with every image uploaded once, no lost reference and no line sent
with a missing file, every item stored once and every cost counted once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from faults_helpers import MODEL, Drill, check_exactly_once
from PIL import Image
from test_kill import expire_leases

N, PER_BATCH = 6, 2

POINTS = [
    "refs.intent",  # the upload's intent is committed, nothing sent
    "refs.uploaded",  # the first image is at the service, its record not written
    "refs.uploaded:2",  # the second one too
    "refs.intent:3",  # a later batch's image
    "submit.uploaded",  # the images are recorded, the batch's file uploaded
    "submit.intent",
]


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def write_ref_spec(drill: Drill) -> Path:
    """N rows over three images (two per row, a third for the last batch), two per batch."""
    (drill.tmp / "pics").mkdir()
    for name, colour in (("a", (1, 2, 3)), ("b", (4, 5, 6)), ("c", (7, 8, 9))):
        _image(drill.tmp / "pics" / f"{name}.png", colour)
    rows = ["sku,title,photo,style"]
    for i in range(N):
        style = "pics/c.png" if i >= N - PER_BATCH else "pics/b.png"
        rows.append(f"img-{i},thing {i},pics/a.png,{style}")
    (drill.tmp / "prompts.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    drill.out_dir = drill.tmp / "out"
    drill.spec = drill.tmp / "drill.toml"
    drill.spec.write_text(
        f'name = "drill"\nmodel = "{MODEL}"\n'
        '[input]\npath = "prompts.csv"\nid_column = "sku"\nprompt = "Photo of {title}"\n'
        'images = ["photo", "style"]\n'
        '[output]\nuri = "out"\n'
        f"[limits]\nmax_requests_per_batch = {PER_BATCH}\n",
        encoding="utf-8",
    )
    return drill.spec


def _image_uploads(drill: Drill) -> list[str]:
    return [
        e["file"]
        for e in drill.emu.request_log
        if e.get("kind") == "upload_chunk" and str(e.get("file") or "").startswith("files/nb-")
    ]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_kill_during_reference_uploads_then_tick(drill: Drill, point: str) -> None:
    write_ref_spec(drill)
    died = drill.sub("run", str(drill.spec), "--poll-interval", "0.1", NANOBATCH_CRASH_AT=point)
    assert died.code == -9, f"expected SIGKILL, got {died.code}\n{died.err[-3000:]}"
    run = drill.query("SELECT id FROM runs")[0][0]
    expire_leases(drill)
    drill.tick_until_done(run)
    check_exactly_once(drill, run, N)
    # Each image went to the Files API once: a kill after the upload is found by its name.
    uploads = _image_uploads(drill)
    assert len(uploads) == len(set(uploads)) == 3, uploads
    rows = drill.query("SELECT name, state, uri FROM uploads ORDER BY id")
    assert [r.state for r in rows] == ["active"] * 3 and all(r.uri for r in rows)
    # No line was sent naming a file the service did not have.
    assert all("error" not in line for line in drill.result_lines())
    report = drill.report(run)
    assert all(len(item["references"]) == 2 for item in report["items"])
    assert json.dumps(report).count('"status": "succeeded"') == N
