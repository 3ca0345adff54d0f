"""Reference images and variants in the pure core and the reading edge (CONTRACT section 9):
every rejection reason, refs in column order, variants' keys and seeds, the shared key
namespace, request lines with fileData parts, and the prompt-cache hash."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters import inputs
from pipeline.adapters.references import HashingReader, ReferenceBook
from pipeline.core import expand
from pipeline.core.catalog import load_catalog
from pipeline.core.expand import request_line
from pipeline.core.pricing import Estimator
from pipeline.core.refimage import MAX_REFERENCE_BYTES, Ref, sniff_mime
from pipeline.core.rows import expand_columns, in_row_order
from pipeline.core.spec import JobSpec
from pipeline.core.spec_parse import parse_spec
from pipeline.core.table import Block, Item, Reject

CAT = load_catalog()
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 40
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x02" * 40
HEIC = b"\x00\x00\x00\x18ftypheic" + b"\x03" * 40
HEIF = b"\x00\x00\x00\x18ftypmif1" + b"\x04" * 40


def _spec(
    folder: Path, *, images: str = '["a", "b"]', variants: int = 1, model: str = ""
) -> JobSpec:
    text = (
        f'name = "refs"\nmodel = "{model or "gemini-3-pro-image-preview"}"\n[input]\n'
        f'path = "x.csv"\nid_column = "id"\nprompt_column = "p"\nimages = {images}\n'
        f'variants = {variants}\n[output]\nuri = "o"\n'
    )
    return parse_spec(text, folder / "job.toml", CAT)


def _expand(
    spec: JobSpec, rows: Sequence[dict[str, Any]], book: ReferenceBook | None = None
) -> list[Item | Reject]:
    names = sorted({name for row in rows for name in row})
    block = Block(1, len(rows), {name: [row.get(name) for row in rows] for name in names})
    book = book or ReferenceBook(spec.source.parent)
    out = expand_columns(
        spec,
        CAT.get(spec.model),
        [block],
        has_ratio_column=False,
        has_size_column=False,
        references=book,
    )
    return list(in_row_order(out))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (WEBP, "image/webp"),
        (HEIC, "image/heic"),
        (HEIF, "image/heif"),
        (b"GIF89a" + b"\x00" * 30, None),
        (b"\x00\x00\x00\x18ftypavif", None),
        (b"", None),
    ],
)
def test_kind_is_judged_by_content(data: bytes, mime: str | None) -> None:
    assert sniff_mime(data[:32]) == mime


def test_references_in_column_order_empty_cells_skipped(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "p.png").write_bytes(PNG)
    (tmp_path / "s.jpg").write_bytes(JPEG)
    spec = _spec(tmp_path)
    out = _expand(
        spec,
        [
            {"id": "k1", "p": "x", "a": "imgs/p.png", "b": "s.jpg"},
            {"id": "k2", "p": "y", "a": "", "b": " s.jpg "},
            {"id": "k3", "p": "z", "a": None, "b": ""},
        ],
    )
    assert all(isinstance(entry, Item) for entry in out), out
    items = {entry.key: entry for entry in out if isinstance(entry, Item)}
    png = Ref(_sha(PNG), "image/png", len(PNG), str(tmp_path / "imgs" / "p.png"))
    jpg = Ref(_sha(JPEG), "image/jpeg", len(JPEG), str(tmp_path / "s.jpg"))
    assert items["k1"].refs == (png, jpg)
    assert items["k2"].refs == (jpg,)
    assert items["k3"].refs == ()
    assert items["k1"].seed is None
    # Each reference image counts the model's input tokens per the data file.
    plain = Estimator(CAT.get(spec.model))("1K", "x")
    assert items["k1"].est_tokens == plain.tokens + 2 * 560


def test_every_rejection_reason_names_the_column_and_the_path(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(PNG)
    (tmp_path / "notes.png").write_bytes(b"just some text, not an image")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "big.png").write_bytes(PNG + b"\x00" * (MAX_REFERENCE_BYTES + 1 - len(PNG)))
    locked = tmp_path / "locked.png"
    locked.write_bytes(PNG)
    locked.chmod(0)
    rows = [
        {"id": "missing", "p": "x", "a": "ok.png", "b": "gone.png"},
        {"id": "folder", "p": "x", "a": "folder.png"},
        {"id": "text", "p": "x", "b": "notes.png"},
        {"id": "big", "p": "x", "a": "big.png"},
        {"id": "locked", "p": "x", "a": "locked.png"},
        {"id": "scheme", "p": "x", "a": "https://example.com/a.png"},
    ]
    try:
        out = _expand(_spec(tmp_path), rows)
    finally:
        locked.chmod(0o644)
    reasons = {entry.key: entry.reason for entry in out if isinstance(entry, Reject)}
    path = str(tmp_path)
    assert reasons["missing"] == f"reference image in column 'b': no such file {path}/gone.png"
    assert reasons["folder"] == (
        f"reference image in column 'a': {path}/folder.png is a folder, not an image file"
    )
    assert reasons["text"] == (
        f"reference image in column 'b': {path}/notes.png is not a PNG, JPEG, WebP, HEIC or "
        "HEIF image (judged by its content, not its name)"
    )
    assert reasons["big"].startswith(f"reference image in column 'a': {path}/big.png is ")
    assert "more than the 20 MiB" in reasons["big"]
    if os.geteuid() != 0:  # root reads any file
        assert reasons["locked"] == (
            f"reference image in column 'a': cannot read {path}/locked.png: Permission denied"
        )
    assert "https://example.com/a.png is not a local path or gs://" in reasons["scheme"]


def test_more_references_than_the_model_accepts(tmp_path: Path) -> None:
    for name in "abcd":
        (tmp_path / f"{name}.png").write_bytes(PNG + name.encode())
    spec = _spec(tmp_path, images='["a", "b", "c", "d"]', model="gemini-2.5-flash-image")
    out = _expand(
        spec,
        [
            {"id": "four", "p": "x", "a": "a.png", "b": "b.png", "c": "c.png", "d": "d.png"},
            {"id": "three", "p": "x", "a": "a.png", "b": "b.png", "c": "c.png", "d": ""},
        ],
    )
    assert isinstance(out[0], Reject) and isinstance(out[1], Item)
    assert out[0].reason == (
        "4 reference images, more than the 3 gemini-2.5-flash-image accepts "
        "(pipeline/data/models.toml)"
    )


def test_shared_images_are_read_once(tmp_path: Path) -> None:
    """A thousand rows sharing two images read each image once, whatever the spelling."""
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(JPEG)
    book = ReferenceBook(tmp_path)
    rows = [
        {"id": f"k{i}", "p": "x", "a": ["a.png", "./a.png", str(tmp_path / "a.png")][i % 3]}
        | {"b": "b.jpg"}
        for i in range(1000)
    ]
    out = _expand(_spec(tmp_path), rows, book)
    assert len(out) == 1000 and all(isinstance(e, Item) for e in out)
    assert book.reads == 2


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    """The hash is remembered by (path, size, mtime): a new book sees a rewritten file anew,
    and two books over the same file agree."""
    image = tmp_path / "a.png"
    image.write_bytes(PNG)
    first = ReferenceBook(tmp_path)("a.png")
    image.write_bytes(PNG + b"more")
    second = ReferenceBook(tmp_path)("a.png")
    assert isinstance(first, Ref) and isinstance(second, Ref)
    assert first.sha256 == _sha(PNG) and second.sha256 == _sha(PNG + b"more")


def test_gs_references_are_not_checked_at_plan(tmp_path: Path) -> None:
    out = _expand(_spec(tmp_path), [{"id": "k", "p": "x", "a": "gs://bucket/photo.png"}])
    assert isinstance(out[0], Item)
    assert out[0].refs == (Ref("", "", 0, "gs://bucket/photo.png"),)
    bad = _expand(_spec(tmp_path), [{"id": "k", "p": "x", "a": "gs://bucket/"}])
    assert isinstance(bad[0], Reject) and "not a gs://bucket/object uri" in bad[0].reason


def test_variants_have_stable_keys_and_seeds(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    spec = _spec(tmp_path, images='["a"]', variants=3)
    out = _expand(spec, [{"id": "k", "p": "x", "a": "a.png"}, {"id": "m", "p": "y"}])
    assert [(e.row, e.key, e.seed) for e in out if isinstance(e, Item)] == [
        (1, "k.v1", 1),
        (1, "k.v2", 2),
        (1, "k.v3", 3),
        (2, "m.v1", 1),
        (2, "m.v2", 2),
        (2, "m.v3", 3),
    ]
    assert [len(e.refs) for e in out if isinstance(e, Item)] == [1, 1, 1, 0, 0, 0]
    again = _expand(spec, [{"id": "k", "p": "x", "a": "a.png"}, {"id": "m", "p": "y"}])
    assert again == out


@pytest.mark.parametrize(
    ("keys", "rejected"),
    [
        (["a", "a.v2"], {"a.v2": 1}),  # a later row's key is an earlier row's variant
        (["a.v1", "a"], {"a": 1}),  # an earlier row's key is a later row's variant
        (["a", "a"], {"a": 1}),
        (["a.v1", "a.v1.v1"], {"a.v1.v1": 1}),
        (["a", "a.v3", "a.v1.v1"], {}),  # a.v3 is not a variant of a (variants = 2)
    ],
)
def test_a_row_any_of_whose_keys_is_taken_is_rejected_whole(
    tmp_path: Path, keys: list[str], rejected: dict[str, int]
) -> None:
    spec = _spec(tmp_path, images="[]", variants=2)
    rows = [{"id": key, "p": "x"} for key in keys]
    table = tmp_path / "keys.csv"
    table.write_text("id\n" + "\n".join(keys) + "\n")
    repeated = inputs.repeated_key_hashes(table, "id", variants=2)
    for known in (None, repeated):
        names = ["id", "p"]
        block = Block(1, len(rows), {n: [r.get(n) for r in rows] for n in names})
        out = list(
            in_row_order(
                expand_columns(
                    spec,
                    CAT.get(spec.model),
                    [block],
                    has_ratio_column=False,
                    has_size_column=False,
                    repeated_keys=known,
                )
            )
        )
        got = {e.key: e.reason for e in out if isinstance(e, Reject)}
        assert set(got) == set(rejected), (known, got)
        for key, first in rejected.items():
            assert got[key] == f"duplicate key: a key of this row is row {first}'s"
        items = [e.key for e in out if isinstance(e, Item)]
        assert len(items) == len(set(items)) == 2 * (len(keys) - len(rejected))


def test_request_line_with_files_and_seed() -> None:
    files = [("image/png", "https://x/v1beta/files/a1"), ("image/jpeg", "files/b2")]
    line = request_line("k.v2", 'a "cat"', "1:1", "2K", files, 2)
    assert line.endswith(b"\n")
    assert json.loads(line) == {
        "key": "k.v2",
        "request": {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"fileData": {"mimeType": "image/png", "fileUri": files[0][1]}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": files[1][1]}},
                        {"text": 'a "cat"'},
                    ],
                }
            ],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "1:1", "imageSize": "2K"},
                "seed": 2,
            },
        },
    }
    compact = json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":"))
    assert line == compact.encode() + b"\n"
    assert request_line("k", "p", "1:1", "") == request_line("k", "p", "1:1", "", (), None)


def test_cache_hash_covers_seed_and_reference_bytes_in_order() -> None:
    base = expand.prompt_sha256("m", "p", "1:1", "1K")
    # Without a seed or references the hash is the one earlier runs stored.
    canonical = "v1:" + json.dumps(["m", "p", "1:1", "1K"], ensure_ascii=False)
    assert base == hashlib.sha256(canonical.encode()).hexdigest()
    one = expand.prompt_sha256("m", "p", "1:1", "1K", None, ["aa"])
    rich = "v1:" + json.dumps(["m", "p", "1:1", "1K", None, ["aa"]], ensure_ascii=False)
    assert one == hashlib.sha256(rich.encode()).hexdigest()
    hashes = {
        base,
        one,
        expand.prompt_sha256("m", "p", "1:1", "1K", None, ["bb"]),
        expand.prompt_sha256("m", "p", "1:1", "1K", None, ["aa", "bb"]),
        expand.prompt_sha256("m", "p", "1:1", "1K", None, ["bb", "aa"]),
        expand.prompt_sha256("m", "p", "1:1", "1K", 1, ["aa"]),
        expand.prompt_sha256("m", "p", "1:1", "1K", 2, ["aa"]),
        expand.prompt_sha256("m", "p", "1:1", "1K", 1),
    }
    assert len(hashes) == 8


def test_column_builders_equal_the_row_ones_with_references(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(JPEG)
    spec = _spec(tmp_path, variants=2)
    (out,) = expand_columns(
        spec,
        CAT.get(spec.model),
        [Block(1, 2, {"id": ["k", "m"], "p": ["x", "y"], "a": ["a.png", ""], "b": ["b.jpg", ""]})],
        has_ratio_column=False,
        has_size_column=False,
        references=ReferenceBook(tmp_path),
    )
    items = out.items
    uri = {_sha(PNG): "files/p", _sha(JPEG): "files/j"}
    lines = expand.request_lines(items, lambda r: (r.mime, uri[r.sha256]))
    hashes = expand.prompt_hashes(spec.model, items)
    for i in range(len(items)):
        item = items.item(i)
        files = [(r.mime, uri[r.sha256]) for r in item.refs]
        assert lines[i] == request_line(
            item.key, item.prompt, item.aspect_ratio, item.image_size, files, item.seed
        )
        shas = [r.sha256 for r in item.refs]
        assert hashes[i] == expand.prompt_sha256(
            spec.model, item.prompt, item.aspect_ratio, item.image_size, item.seed, shas
        )
    assert items.ref_text() == [f"{_sha(PNG)},{_sha(JPEG)}"] * 2 + [None, None]
    measured = expand.request_lines(items)
    assert all(len(m) >= len(line) for m, line in zip(measured, lines, strict=True))


def test_hashing_reader_proves_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(PNG * 100)
    with path.open("rb") as fh:
        reader = HashingReader(fh)
        reader.seek(0, os.SEEK_END)
        reader.seek(0)
        while reader.read(7):
            pass
        assert reader.sha256() == _sha(PNG * 100)


def test_line_lengths_count_what_request_lines_build(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(PNG)
    (tmp_path / "b.jpg").write_bytes(JPEG)
    for variants in (1, 3):
        spec = _spec(tmp_path, variants=variants)
        (out,) = expand_columns(
            spec,
            CAT.get(spec.model),
            [
                Block(
                    1,
                    3,
                    {
                        "id": ["k", "m", "n"],
                        "p": ["x", "yé", "z"],
                        "a": ["a.png", "", "b.jpg"],
                        "b": ["b.jpg", "", ""],
                    },
                )
            ],
            has_ratio_column=False,
            has_size_column=False,
            references=ReferenceBook(tmp_path),
        )
        assert expand.line_lengths(out.items) == list(map(len, expand.request_lines(out.items)))


def test_reference_images_are_refused_on_the_vertex_channel(tmp_path: Path) -> None:
    """Reference images travel through the Files API, which Vertex AI has not: the spec is
    refused when it is read (variants are fine there)."""
    from pipeline.core.errors import SpecError

    vertex = (
        '[channel]\nkind = "vertex"\nproject = "my-project"\nlocation = "europe-west4"\n'
        'staging_uri = "gs://my-bucket/nb"\n'
    )
    text = (
        'name = "refs"\nmodel = "gemini-3-pro-image-preview"\n[input]\npath = "x.csv"\n'
        'id_column = "id"\nprompt_column = "p"\n{extra}\n[output]\nuri = "o"\n' + vertex
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text.format(extra='images = ["a"]'), tmp_path / "job.toml", CAT)
    assert "input.images" in str(info.value) and "Files API" in str(info.value)
    spec = parse_spec(text.format(extra="variants = 2"), tmp_path / "job.toml", CAT)
    assert spec.input.variants == 2
