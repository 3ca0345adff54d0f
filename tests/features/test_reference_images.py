"""Reference images and variants end to end on the emulator (CONTRACT section 9): shared
images uploaded once, reuse and re-upload around the 24 h rule on the emulator's clock, a
gone or expired reference retried after a fresh upload, variants, the prompt cache by
reference bytes, the fallback model that takes fewer references, the right references sent."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from google import genai
from PIL import Image

from pipeline.adapters.ledger import repo
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator, FaultPlan, LineFault
from pipeline.shell.context import Context
from pipeline.shell.tick import tick
from tests.features.helpers import KEY, PRO, make_context, report_json, submit

HOUR = 3600.0
FLASH25 = "gemini-2.5-flash-image"


def make_image(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """A small real image file; its bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_ref_job(
    folder: Path,
    name: str,
    rows: Sequence[dict[str, str]],
    *,
    images: Sequence[str] = ("photo", "style"),
    variants: int = 1,
    model: str = PRO,
    fallback: str | None = None,
    per_batch: int = 1000,
    max_attempts: int = 3,
) -> Path:
    """A job spec over a CSV of key, prompt and image columns (paths relative to the spec)."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["key", "prompt", *images]
    with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fb = f'fallback_model = "{fallback}"\n' if fallback else ""
    spec = folder / f"{name}.toml"
    spec.write_text(
        f'name = "{name}"\nmodel = "{model}"\n{fb}\n'
        f'[input]\npath = "{name}.csv"\nid_column = "key"\nprompt_column = "prompt"\n'
        f"images = {json.dumps(list(images))}\nvariants = {variants}\n\n"
        f'[output]\nuri = "{folder / "out" / "{run}"}"\n\n'
        f"[limits]\nmax_attempts = {max_attempts}\nmax_requests_per_batch = {per_batch}\n",
        encoding="utf-8",
    )
    return spec


def context(tmp_path: Path, emu: Emulator) -> Context:
    """A context on the emulator whose clock is the emulator's (the 24 h rule is tested on it)."""
    ctx = make_context(tmp_path, emu)
    ctx.clock = emu.clock.now
    return ctx


def run_ticks(ctx: Context, emu: Emulator, run_id: str, step: float = 30.0, limit: int = 40) -> str:
    """Tick, moving the emulator's clock `step` seconds between ticks, until the run ends."""
    catalog = load_catalog()
    for _ in range(limit):
        tick(ctx, catalog)
        with ctx.ledger.engine.connect() as conn:
            state = repo.get_run(conn, run_id).state
        if state != "active":
            return state
        emu.clock.advance(step)
    raise AssertionError(f"run {run_id} did not finish in {limit} ticks")


def image_uploads(emu: Emulator) -> list[str]:
    """Reference images uploaded to the emulator (nanobatch names them files/nb-...)."""
    return [
        e["file"]
        for e in emu.request_log
        if e.get("kind") == "upload_chunk" and str(e.get("file") or "").startswith("files/nb-")
    ]


def lines_sent(emu: Emulator) -> list[dict[str, Any]]:
    return [e for e in emu.request_log if e.get("kind") == "line"]


def items_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in report["items"]}


@pytest.fixture
def pics(tmp_path: Path) -> dict[str, bytes]:
    folder = tmp_path / "job"
    return {
        "red": make_image(folder / "pics" / "red.png", (255, 0, 0)),
        "blue": make_image(folder / "pics" / "blue.jpg", (0, 0, 255), "JPEG"),
        "green": make_image(folder / "pics" / "green.png", (0, 255, 0)),
    }


ROWS = [
    {"key": f"p{i}", "prompt": "a studio shot", "photo": "pics/red.png", "style": "pics/blue.jpg"}
    for i in range(5)
] + [{"key": "p5", "prompt": "a studio shot", "photo": "pics/green.png", "style": ""}]


def test_shared_images_are_uploaded_once_and_sent_in_column_order(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    ctx = context(tmp_path, emu)
    spec = write_ref_job(tmp_path / "job", "shots", ROWS, per_batch=2)
    run_id = submit(ctx, spec)
    assert run_ticks(ctx, emu, run_id) == "finished"
    assert len(emu.batches()) == 3
    uploads = image_uploads(emu)
    assert len(uploads) == len(set(uploads)) == 3  # red, blue, green: once each
    report = report_json(ctx, run_id)
    items = items_of(report)
    red, blue, green = sha(pics["red"]), sha(pics["blue"]), sha(pics["green"])
    for i in range(5):
        assert items[f"p{i}"]["references"] == [red, blue]
        assert items[f"p{i}"]["seed"] is None
        assert items[f"p{i}"]["status"] == "succeeded"
    assert items["p5"]["references"] == [green]
    # Same prompt, other references: another image; the same references: the same image.
    assert len({items[f"p{i}"]["sha256"] for i in range(5)}) == 1
    assert items["p5"]["sha256"] != items["p0"]["sha256"]
    # Each reference image counts the model's input tokens (560 for Pro) in the account.
    assert items["p0"]["input_tokens"] - items["p5"]["input_tokens"] == 560
    manifest = pq.read_table(Path(items["p0"]["uri"]).parent / "manifest.parquet").to_pylist()
    by_key = {row["key"]: row for row in manifest}
    assert by_key["p0"]["references"] == [red, blue] and by_key["p5"]["references"] == [green]
    with ctx.ledger.engine.connect() as conn:
        rows = conn.execute(repo.UPLOADS.select()).all()
    assert sorted(r.sha256 for r in rows) == sorted([red, blue, green])
    assert {r.state for r in rows} == {"active"}
    assert all(r.expires_at is not None and r.uri for r in rows)


def test_the_right_references_are_sent(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    """The item's image is the one the service makes for those bytes in that order: the
    same request sent by hand with the images uploaded by hand gives the same image."""
    ctx = context(tmp_path, emu)
    spec = write_ref_job(tmp_path / "job", "shots", ROWS[:1])
    run_id = submit(ctx, spec)
    run_ticks(ctx, emu, run_id)
    (item,) = report_json(ctx, run_id)["items"]
    client = genai.Client(api_key=KEY, http_options={"base_url": emu.url})
    uris = []
    for name in ("pics/red.png", "pics/blue.jpg"):
        mime = "image/png" if name.endswith("png") else "image/jpeg"
        up = client.files.upload(file=str(tmp_path / "job" / name), config={"mime_type": mime})
        uris.append((mime, up.uri))
    for order, expect_same in ((uris, True), (uris[::-1], False)):
        parts: list[dict[str, Any]] = [
            {"fileData": {"mimeType": m, "fileUri": u}} for m, u in order
        ]
        request = {
            "contents": [{"role": "user", "parts": [*parts, {"text": "a studio shot"}]}],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "1:1", "imageSize": "1K"},
            },
        }
        src = tmp_path / "hand.jsonl"
        src.write_text(json.dumps({"key": "hand", "request": request}) + "\n")
        up = client.files.upload(file=str(src), config={"mime_type": "jsonl"})
        job = client.batches.create(model=PRO, src=up.name, config={"display_name": "hand"})
        emu.clock.advance(60)
        done = client.batches.get(name=job.name)
        assert done.dest is not None and done.dest.file_name
        line = json.loads(client.files.download(file=done.dest.file_name))
        image = [
            p
            for p in line["response"]["candidates"][0]["content"]["parts"]
            if "inlineData" in p and not p.get("thought")
        ][-1]
        got = sha(base64.b64decode(image["inlineData"]["data"]))
        assert (got == item["sha256"]) is expect_same


def test_uploads_are_reused_while_they_live_more_than_24_hours(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    """A later run 23 h on reuses the uploads (25 h to live); one 25 h on uploads again."""
    ctx = context(tmp_path, emu)
    rows = ROWS[:2]
    for name in ("first", "second", "third"):
        (tmp_path / name / "pics").mkdir(parents=True)
        (tmp_path / name / "pics" / "red.png").write_bytes(pics["red"])
        (tmp_path / name / "pics" / "blue.jpg").write_bytes(pics["blue"])
    first = submit(ctx, write_ref_job(tmp_path / "first", "first", rows))
    run_ticks(ctx, emu, first)
    assert len(image_uploads(emu)) == 2
    emu.clock.advance(23 * HOUR)
    second = submit(ctx, write_ref_job(tmp_path / "second", "second", rows), use_cache=False)
    run_ticks(ctx, emu, second)
    assert len(image_uploads(emu)) == 2  # reused: 25 h left
    emu.clock.advance(2 * HOUR)
    third = submit(ctx, write_ref_job(tmp_path / "third", "third", rows), use_cache=False)
    run_ticks(ctx, emu, third)
    assert len(image_uploads(emu)) == 4  # 23 h left: uploaded again
    for run_id in (first, second, third):
        report = report_json(ctx, run_id)
        assert report["summary"]["succeeded"] == 2, report


def test_a_gone_reference_is_retried_after_a_fresh_upload(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    """The file is deleted at the service after the batch was created: the line fails with
    7 PERMISSION_DENIED naming it; the item is tried again (a try) with the image uploaded
    anew, and succeeds."""
    ctx = context(tmp_path, emu)
    spec = write_ref_job(tmp_path / "job", "shots", ROWS[:2])
    run_id = submit(ctx, spec)
    tick(ctx, load_catalog())  # uploads and creates
    (first_upload, second_upload) = image_uploads(emu)
    client = genai.Client(api_key=KEY, http_options={"base_url": emu.url})
    client.files.delete(name=first_upload)
    emu.clock.advance(30)
    assert run_ticks(ctx, emu, run_id) == "finished"
    report = report_json(ctx, run_id)
    for item in report["items"]:
        assert item["status"] == "succeeded" and item["attempts"] == 2, item
    uploads = image_uploads(emu)
    assert len(uploads) == 3 and uploads[:2] == [first_upload, second_upload]
    with ctx.ledger.engine.connect() as conn:
        states = {r.name: r.state for r in conn.execute(repo.UPLOADS.select())}
        retried = [a for a in conn.execute(repo.ATTEMPTS.select()) if a.outcome == "retry"]
        reasons = [a.reason for a in retried]
    assert states[first_upload] == "stale" and states[second_upload] == "active"
    assert states[uploads[2]] == "active"
    assert len(reasons) == 2
    assert all(r.startswith(f"reference image {first_upload} gone or expired") for r in reasons)
    assert {a.reason_code for a in retried} == {"reference_gone"}


def test_an_expired_reference_is_retried_and_succeeds(
    tmp_path: Path, pics: dict[str, bytes]
) -> None:
    """An upload reused with just over 24 h to live expires while its batch waits 25 h to
    run: the line fails, and the retry uploads the image again and succeeds."""
    with Emulator(image_scale=0.02, pending_seconds=25 * HOUR, running_seconds=5) as emu:
        ctx = context(tmp_path, emu)
        (tmp_path / "late" / "pics").mkdir(parents=True)
        for name in ("red.png", "blue.jpg"):
            (tmp_path / "late" / "pics" / name).write_bytes(
                (tmp_path / "job" / "pics" / name).read_bytes()
            )
        early = submit(ctx, write_ref_job(tmp_path / "job", "early", ROWS[:1]))
        tick(ctx, load_catalog())  # uploads both images at t0, creates its batch
        assert len(image_uploads(emu)) == 2
        emu.clock.advance(23.9 * HOUR)
        late = submit(ctx, write_ref_job(tmp_path / "late", "late", ROWS[:1]), use_cache=False)
        tick(ctx, load_catalog())  # reuses them (24.1 h left); its batch runs 25 h later
        assert len(image_uploads(emu)) == 2
        assert run_ticks(ctx, emu, early, step=2 * HOUR) == "finished"
        assert run_ticks(ctx, emu, late, step=2 * HOUR, limit=60) == "finished"
        (item,) = report_json(ctx, late)["items"]
        assert item["status"] == "succeeded" and item["attempts"] == 2
        assert len(image_uploads(emu)) == 4


def test_variants_have_distinct_images_stable_keys_and_seeds(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    ctx = context(tmp_path, emu)
    rows = [
        {"key": "shoe", "prompt": "a shoe", "photo": "pics/red.png"},
        {"key": "shoe.v2", "prompt": "a boot", "photo": "pics/red.png"},  # taken by shoe
        {"key": "bag", "prompt": "a bag", "photo": ""},
    ]
    spec = write_ref_job(tmp_path / "job", "variants", rows, images=("photo",), variants=3)
    run_id = submit(ctx, spec)
    run_ticks(ctx, emu, run_id)
    report = report_json(ctx, run_id)
    items = items_of(report)
    assert sorted(items) == ["bag.v1", "bag.v2", "bag.v3", "shoe.v1", "shoe.v2", "shoe.v3"]
    assert [items[f"shoe.v{n}"]["seed"] for n in (1, 2, 3)] == [1, 2, 3]
    assert len({items[f"shoe.v{n}"]["sha256"] for n in (1, 2, 3)}) == 3
    assert len({items[f"bag.v{n}"]["sha256"] for n in (1, 2, 3)}) == 3
    assert all(Path(items[k]["uri"]).name == f"{k}.png" for k in items)
    assert report["summary"]["rejected"] == 1
    rejects = (Path(items["bag.v1"]["uri"]).parent / "rejects.csv").read_text()
    assert "shoe.v2" in rejects and "duplicate key: a key of this row is row 1's" in rejects
    assert len(image_uploads(emu)) == 1
    sent = {e["key"] for e in lines_sent(emu)}
    assert sent == set(items)


def test_prompt_cache_hits_and_misses_by_reference_bytes(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    """Same prompt and same reference bytes (another file, another run): served from the
    cache, nothing uploaded or sent; other bytes at the same path: sent."""
    ctx = context(tmp_path, emu)
    rows = [{"key": "k", "prompt": "a shoe", "photo": "pics/red.png"}]
    run_ticks(
        ctx, emu, submit(ctx, write_ref_job(tmp_path / "job", "one", rows, images=("photo",)))
    )
    before = (len(image_uploads(emu)), len(lines_sent(emu)))
    assert before == (1, 1)
    make_image(tmp_path / "two" / "pics" / "red.png", (255, 0, 0))  # same bytes
    hit = submit(ctx, write_ref_job(tmp_path / "two", "two", rows, images=("photo",)))
    run_ticks(ctx, emu, hit)
    (item,) = report_json(ctx, hit)["items"]
    assert item["cached"] is True and item["references"] == [sha(pics["red"])]
    assert (len(image_uploads(emu)), len(lines_sent(emu))) == before
    other = make_image(tmp_path / "three" / "pics" / "red.png", (250, 0, 0))  # other bytes
    miss = submit(ctx, write_ref_job(tmp_path / "three", "three", rows, images=("photo",)))
    run_ticks(ctx, emu, miss)
    (item,) = report_json(ctx, miss)["items"]
    assert item["cached"] is False and item["references"] == [sha(other)]
    assert (len(image_uploads(emu)), len(lines_sent(emu))) == (2, 2)


def test_fallback_model_is_not_used_for_more_references_than_it_accepts(
    tmp_path: Path, emu: Emulator, pics: dict[str, bytes]
) -> None:
    folder = tmp_path / "job"
    for name in ("a", "b", "c", "d"):
        make_image(folder / "pics" / f"{name}.png", (ord(name), 1, 2))
    images = ("i1", "i2", "i3", "i4")
    many = {"key": "many", "prompt": "x"} | {
        c: f"pics/{n}.png" for c, n in zip(images, "abcd", strict=True)
    }
    one = {"key": "one", "prompt": "y", "i1": "pics/a.png", "i2": "", "i3": "", "i4": ""}
    emu.faults = FaultPlan(line_faults=[LineFault(kind="error", code=3, keys=["many", "one"])])
    ctx = context(tmp_path, emu)
    spec = write_ref_job(folder, "fb", [many, one], images=images, fallback=FLASH25)
    run_id = submit(ctx, spec)
    run_ticks(ctx, emu, run_id)
    items = items_of(report_json(ctx, run_id))
    assert items["many"]["status"] == "failed" and items["many"]["attempts"] == 1
    assert items["many"]["error"].endswith(
        f"fallback_model {FLASH25} not tried: it accepts at most 3 reference images, "
        "this item has 4"
    )
    assert items["one"]["attempts"] == 2  # its one try on the fallback model
    with ctx.ledger.engine.connect() as conn:
        codes = {r.key: r.reason_code for r in conn.execute(repo.ITEMS.select())}
    assert codes["many"] == "fallback_refused"
    models = {(e["batch"], e["key"]) for e in lines_sent(emu)}
    assert ("many" in {k for _, k in models}) and len(models) == 3


@pytest.mark.gcs
def test_gs_references_are_checked_at_submit_and_streamed_into_the_upload(
    tmp_path: Path, emu: Emulator, gcs_env: str, pics: dict[str, bytes]
) -> None:
    """gs:// cells pass `plan` unchecked; `submit` reads each object once (kind, size, hash)
    and rejects a row naming a missing one; the upload streams the object from GCS."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from pipeline.shell.planning import load_spec, make_plan

    bucket = storage.Client(project="nanobatch-test", credentials=AnonymousCredentials()).bucket(
        gcs_env
    )
    bucket.blob("refs/red.png").upload_from_string(pics["red"], content_type="image/png")
    bucket.blob("refs/notes.png").upload_from_string(b"plain text", content_type="image/png")
    rows = [
        {"key": "a", "prompt": "a shoe", "photo": f"gs://{gcs_env}/refs/red.png"},
        {"key": "b", "prompt": "a boot", "photo": f"gs://{gcs_env}/refs/red.png"},
        {"key": "gone", "prompt": "a hat", "photo": f"gs://{gcs_env}/refs/nope.png"},
        {"key": "text", "prompt": "a cap", "photo": f"gs://{gcs_env}/refs/notes.png"},
    ]
    spec = write_ref_job(tmp_path / "job", "gcs", rows, images=("photo",))
    catalog = load_catalog()
    plan = make_plan(load_spec(spec, catalog), catalog)
    assert (plan.items, plan.rejected, plan.references) == (4, 0, 4)
    ctx = context(tmp_path, emu)
    run_id = submit(ctx, spec)
    assert run_ticks(ctx, emu, run_id) == "finished"
    report = report_json(ctx, run_id)
    items = items_of(report)
    assert sorted(items) == ["a", "b"]
    assert items["a"]["references"] == items["b"]["references"] == [sha(pics["red"])]
    assert report["summary"]["rejected"] == 2
    with ctx.ledger.engine.connect() as conn:
        reasons = {r.key: r.reason for r in repo.rejects_of_run(conn, run_id)}
    assert reasons["gone"] == (
        f"reference image in column 'photo': no such object gs://{gcs_env}/refs/nope.png"
    )
    assert reasons["text"].startswith(f"reference image in column 'photo': gs://{gcs_env}/refs/")
    assert "is not a PNG, JPEG, WebP, HEIC or HEIF image" in reasons["text"]
    assert len(image_uploads(emu)) == 1
