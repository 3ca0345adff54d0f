from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.core import expand
from pipeline.core.catalog import load_catalog
from pipeline.core.expand import effective_size, prompt_sha256, request_line
from pipeline.core.pricing import Estimator, estimate_cost_nanos
from pipeline.core.rows import expand_columns, in_row_order
from pipeline.core.spec import JobSpec
from pipeline.core.spec_parse import parse_spec
from pipeline.core.table import UNDECODABLE, Block, Item, Items, Reject

CAT = load_catalog()


def _spec(
    prompt: str = 'prompt = "Photo of {title} on {bg}"', model: str = "gemini-3-pro-image-preview"
) -> JobSpec:
    text = (
        f'name = "a"\nmodel = "{model}"\n[input]\npath = "x.csv"\nid_column = "id"\n'
        f'encoding = "latin-1"\n{prompt}\n[image]\naspect_ratio = "3:2"\n[output]\nuri = "o"\n'
    )
    return parse_spec(text, Path("/jobs/a.toml"), CAT)


def _blocks(rows: Sequence[dict[str, Any]], per_block: int) -> list[Block]:
    """The rows as blocks of `per_block`, as the input adapter makes them (a column missing
    from a row is None)."""
    names = sorted({name for row in rows for name in row})
    return [
        Block(
            start + 1,
            len(part),
            {name: [row.get(name) for row in part] for name in names},
        )
        for start in range(0, len(rows), per_block)
        for part in [rows[start : start + per_block]]
    ]


def _run(spec: JobSpec, rows: Sequence[Any], ratio: bool = False, size: bool = False) -> list:
    """Expanded in blocks of 2 rows and in one block, remembering every key and only the
    repeated ones (as `planning` does): the same results every way."""
    info = CAT.get(spec.model)
    keys = [row.get("id") for row in rows if isinstance(row.get("id"), str)]
    repeated = {hash(k) for k in keys if keys.count(k) > 1}
    outs = [
        list(
            in_row_order(
                expand_columns(
                    spec,
                    info,
                    _blocks(rows, n),
                    has_ratio_column=ratio,
                    has_size_column=size,
                    repeated_keys=known,
                )
            )
        )
        for n, known in ((2, None), (max(1, len(rows)), None), (2, repeated))
    ]
    assert outs[0] == outs[1] == outs[2]
    return outs[0]


def _fields(item: Item) -> tuple[object, ...]:
    return (item.row, item.key, item.prompt, item.aspect_ratio, item.image_size, item.est_tokens)


def test_template_items() -> None:
    out = _run(_spec(), [{"id": "k1", "title": "a mug", "bg": "oak"}])
    assert [_fields(i) for i in out] == [(1, "k1", "Photo of a mug on oak", "3:2", "1K", 1326)]
    assert out[0].est_tokens == 6 + 1120 + 200
    pro = CAT.get("gemini-3-pro-image-preview")
    prompt = "Photo of a mug on oak"
    assert out[0].estimate.batch_nanos == estimate_cost_nanos(pro, "1K", prompt, "batch")
    assert out[0].estimate.standard_nanos == estimate_cost_nanos(pro, "1K", prompt, "standard")


def test_rejects_and_duplicates() -> None:
    rows = [
        {"id": "k1", "title": "", "bg": "oak"},  # empty template value: still owns k1
        {"id": "k1", "title": "x", "bg": "y"},
        {"id": "", "title": "x", "bg": "y"},
        {"id": None, "title": "x", "bg": "y"},
        {"id": "k2", "title": UNDECODABLE, "bg": "y"},
        {"id": UNDECODABLE, "title": "x", "bg": "y"},
        {"id": "k3", "title": "x"},  # bg missing
        {"id": "k4", "title": "x", "bg": "y"},
        {"id": "k4", "title": "x", "bg": "y"},
    ]
    out = _run(_spec(), rows)
    assert out[0] == Reject(1, "k1", "empty value in column 'title' for the prompt template")
    assert out[1] == Reject(2, "k1", "duplicate key, first seen in row 1")
    assert out[2] == Reject(3, "", "empty key in column 'id'")
    assert out[3] == Reject(4, "", "empty key in column 'id'")
    assert out[4] == Reject(5, "k2", "template value in column 'title' does not decode as latin-1")
    assert out[5] == Reject(6, "", "key in column 'id' does not decode as latin-1")
    assert out[6] == Reject(7, "k3", "empty value in column 'bg' for the prompt template")
    assert isinstance(out[7], Item) and out[7].key == "k4"
    assert out[8] == Reject(9, "k4", "duplicate key, first seen in row 8")


def test_prompt_column() -> None:
    spec = _spec('prompt_column = "p"')
    out = _run(spec, [{"id": "a", "p": " "}, {"id": "b", "p": "a fox"}, {"id": "c", "p": None}])
    assert out[0] == Reject(1, "a", "empty prompt")
    assert isinstance(out[1], Item) and out[1].prompt == "a fox"
    assert out[2] == Reject(3, "c", "empty prompt")


def test_per_row_ratio_and_size() -> None:
    spec = _spec('prompt_column = "p"')
    rows = [
        {"id": "a", "p": "x", "aspect_ratio": "", "image_size": None},
        {"id": "b", "p": "x", "aspect_ratio": " 16:9 ", "image_size": "4K"},
        {"id": "c", "p": "x", "aspect_ratio": "7:3", "image_size": "4K"},
        {"id": "d", "p": "x", "aspect_ratio": "1:1", "image_size": "4k"},
    ]
    out = _run(spec, rows, ratio=True, size=True)
    assert (out[0].aspect_ratio, out[0].image_size) == ("3:2", "1K")
    assert (out[1].aspect_ratio, out[1].image_size, out[1].est_tokens) == ("16:9", "4K", 2201)
    assert isinstance(out[2], Reject) and "'7:3'" in out[2].reason and "21:9" in out[2].reason
    assert isinstance(out[3], Reject) and "image_size '4k'" in out[3].reason
    assert "1K, 2K, 4K" in out[3].reason
    # without the flags, the columns are not looked at
    assert _run(spec, rows[2:3])[0].aspect_ratio == "3:2"


def test_model_without_sizes() -> None:
    spec = _spec('prompt_column = "p"', model="gemini-2.5-flash-image")
    out = _run(spec, [{"id": "a", "p": "x", "image_size": "4K"}], size=True)
    assert [_fields(i) for i in out] == [(1, "a", "x", "3:2", "", 1 + 1290)]


def test_request_line_shape_and_determinism() -> None:
    line = request_line("k1", "café ☃", "16:9", "2K")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line == request_line("k1", "café ☃", "16:9", "2K")
    assert b" " not in line.replace("café ☃".encode(), b"")
    assert "café ☃".encode() in line
    assert json.loads(line) == {
        "key": "k1",
        "request": {
            "contents": [{"role": "user", "parts": [{"text": "café ☃"}]}],
            "generationConfig": {
                "responseModalities": ["IMAGE"],
                "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
            },
        },
    }
    no_size = json.loads(request_line("k", "p", "1:1", ""))
    assert no_size["request"]["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1"}


def test_prompt_sha256() -> None:
    h = prompt_sha256("m", "p", "1:1", "1K")
    # The hashed text is fixed: stored images of earlier runs are found by it.
    canonical = "v1:" + json.dumps(["m", "p", "1:1", "1K"], ensure_ascii=False)
    assert h == hashlib.sha256(canonical.encode()).hexdigest()
    assert len(h) == 64 and h == prompt_sha256("m", "p", "1:1", "1K")
    assert h != prompt_sha256("m", "p", "1:1", "2K")
    assert prompt_sha256("m", "a", "b", "") != prompt_sha256("m", "a,", "b", "")


def test_column_builders_equal_the_row_ones() -> None:
    """request_lines and prompt_hashes build the fixed parts once per (ratio, size): the bytes
    and hashes are still request_line's and prompt_sha256's, item by item."""
    prompts = ["a fox", 'say "hi"\n\ttab \\ back', "café ☃", "\x00\x1f"]
    pairs = [("1:1", "1K"), ("16:9", "4K"), ("1:1", ""), ("16:9", "4K")]
    estimate = Estimator(CAT.get("gemini-3-pro-image"))
    items = Items(
        rows=[1, 2, 3, 4],
        keys=["k1", 'k"2', "k3", "ключ"],
        prompts=prompts,
        ratios=[r for r, _ in pairs],
        sizes=[s for _, s in pairs],
        estimates=[estimate(s or "1K", p) for p, (_, s) in zip(prompts, pairs, strict=True)],
    )
    for subset in (items, items.slice(0, 1), items.pick([3, 1]), items.slice(2, 2)):
        expected = [subset.item(i) for i in range(len(subset))]
        assert expand.request_lines(subset) == [
            request_line(i.key, i.prompt, i.aspect_ratio, i.image_size) for i in expected
        ]
        assert expand.prompt_hashes("m", subset) == [
            prompt_sha256("m", i.prompt, i.aspect_ratio, i.image_size) for i in expected
        ]
    assert [i.key for i in (items.pick([3, 1]).item(0), items.slice(1, 3).item(0))] == [
        "ключ",
        'k"2',
    ]


def test_expand_columns_keeps_rows_and_rejects_apart() -> None:
    spec = _spec('prompt_column = "p"')
    rows = [
        {"id": "a", "p": "x"},
        {"id": "a", "p": "y"},
        {"id": "b", "p": ""},
        {"id": "c", "p": "z"},
    ]
    (out,) = expand_columns(
        spec, CAT.get(spec.model), _blocks(rows, 4), has_ratio_column=False, has_size_column=False
    )
    assert (list(out.items.rows), list(out.items.keys), list(out.items.prompts)) == (
        [1, 4],
        ["a", "c"],
        ["x", "z"],
    )
    assert [(r.row, r.reason) for r in out.rejects] == [
        (2, "duplicate key, first seen in row 1"),
        (3, "empty prompt"),
    ]


def test_effective_size() -> None:
    pro, flash = CAT.get("gemini-3-pro-image"), CAT.get("gemini-2.5-flash-image")
    nb2 = CAT.get("gemini-3.1-flash-image-preview")
    assert effective_size(flash, "2K") == ""
    assert effective_size(pro, "2K") == "2K"
    assert effective_size(pro, "") == "1K"
    assert effective_size(pro, "512") == "1K"
    assert effective_size(nb2, "512") == "512"
