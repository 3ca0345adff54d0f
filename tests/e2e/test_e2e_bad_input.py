"""Bad input spends nothing: a bad spec exits 2 before any upload; bad rows are rejected."""

from __future__ import annotations

import csv
from typing import Any

import pytest


def _assert_nothing_spent(e2e: Any) -> None:
    kinds = e2e.kinds()
    assert "upload_start" not in kinds and "create" not in kinds, kinds
    status = e2e.invoke("status", "--json")
    assert status.code == 0, status.stderr
    assert status.json() == {"runs": []}


@pytest.mark.parametrize(
    ("spec", "csv_text", "names"),
    [
        pytest.param({"extra": "colour_scheme = 1"}, None, ["colour_scheme"], id="unknown-key"),
        pytest.param({"model": "gemini-9-image"}, None, ["gemini-9-image", "model"], id="model"),
        pytest.param({"aspect_ratio": "7:5"}, None, ["7:5", "aspect_ratio", "16:9"], id="ratio"),
        pytest.param({"size": "3K"}, None, ["3K", "size", "2K"], id="size"),
        pytest.param({"input_path": "nope.csv"}, None, ["nope.csv"], id="missing-file"),
        pytest.param(
            {"prompt": "Photo of {title} in {material}"}, None, ["material"], id="missing-column"
        ),
        pytest.param({}, "sku,title\nmug-001,a mug\n", ["colour"], id="missing-template-column"),
        pytest.param(
            {},
            'sku,title,colour\nmug-001,a mug,teal\nlamp-101,a lamp,"brass\nvase-301,a vase,clear\n',
            ["row 2", "'colour'", "quote"],
            id="unterminated-quote",
        ),
        pytest.param(
            {},
            "sku,title,colour,colour\nmug-001,a mug,teal,red\n",
            ["'colour'", "columns 3 and 4"],
            id="duplicate-header",
        ),
        pytest.param(
            {},
            "sku,title,colour\nmug-001,a mug,teal\nlamp-101,a, lamp,brass\n",
            ["row 2", "4 values", "header has 3"],
            id="ragged-row",
        ),
    ],
)
def test_bad_spec_exits_2_and_spends_nothing(
    e2e: Any, spec: dict[str, Any], csv_text: str | None, names: list[str]
) -> None:
    """A bad spec or input exits 2 naming what is wrong, for plan, submit and run alike."""
    e2e.write_spec(**spec)
    if csv_text is not None:
        e2e.csv_path.write_text(csv_text, encoding="utf-8")
    for command in ("plan", "submit", "run"):
        result = e2e.invoke(command, str(e2e.spec_path))
        assert result.code == 2, (command, result.stdout, result.stderr)
        assert result.stdout == ""
        for name in names:
            assert name in result.stderr, (command, name, result.stderr)
    _assert_nothing_spent(e2e)


def test_bad_rows_are_rejected_and_the_rest_goes_on(e2e: Any) -> None:
    """Bad rows (ratio, duplicate, empty prompt, undecodable text, empty key) are rejected."""
    e2e.write_spec(extra="", prompt="{prompt}", max_requests_per_batch=10)
    spec = e2e.spec_path.read_text(encoding="utf-8")
    spec = spec.replace('prompt = "{prompt}"', 'prompt_column = "prompt"')
    e2e.spec_path.write_text(spec, encoding="utf-8")
    e2e.csv_path.write_bytes(
        b"sku,prompt,aspect_ratio\n"
        b"ok-1,a red mug,\n"  # 1
        b"bad-ratio,a blue mug,7:5\n"  # 2
        b"ok-1,a duplicate,\n"  # 3
        b"empty,,\n"  # 4
        b"latin,caf\xe9 au lait,\n"  # 5: not utf-8
        b",no key,\n"  # 6
        b"ok-2,a green mug,16:9\n"  # 7
    )
    plan = e2e.invoke("plan", str(e2e.spec_path), "--json")
    assert plan.code == 0, plan.stderr
    assert (plan.json()["items"], plan.json()["rejected"]) == (2, 5)

    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert sorted(i["key"] for i in report["items"]) == ["ok-1", "ok-2"]
    assert report["summary"]["rejected"] == 5
    sent = [e["key"] for e in e2e.emu.request_log if e.get("kind") == "line"]
    assert sorted(sent) == ["ok-1", "ok-2"]

    (date_dir,) = (e2e.tmp / "out" / "e2e-job").iterdir()
    with (date_dir / "rejects.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["row", "key", "reason"]
    got = {int(r[0]): (r[1], r[2]) for r in rows[1:]}
    assert sorted(got) == [2, 3, 4, 5, 6]
    assert got[2][0] == "bad-ratio" and "7:5" in got[2][1] and "aspect_ratio" in got[2][1]
    assert got[3][0] == "ok-1" and "duplicate" in got[3][1] and "1" in got[3][1]
    assert got[4][0] == "empty" and "empty prompt" in got[4][1]
    assert got[5][0] == "latin" and "decode" in got[5][1]
    assert got[6][0] == "" and "key" in got[6][1]

    status = e2e.invoke("status", report["run"], "--json").json()
    assert status["runs"][0]["items"]["rejected"] == 5


@pytest.mark.parametrize(
    ("column", "values", "prompt_column", "names"),
    [
        pytest.param("title", [["a mug"], ["a lamp"]], False, ["'title'", "list"], id="list-value"),
        pytest.param(
            "title", [{"x": "a"}, {"x": "b"}], False, ["'title'", "struct"], id="struct-value"
        ),
        pytest.param("prompt", [1.5, 2.5], True, ["'prompt'", "double"], id="float-prompt"),
        pytest.param("prompt", [["a"], ["b"]], True, ["'prompt'", "list"], id="list-prompt"),
        pytest.param("sku", [1.0, 2.0], False, ["'sku'", "double"], id="float-key"),
    ],
)
def test_parquet_column_of_a_type_a_prompt_cannot_take(
    e2e: Any, column: str, values: list[Any], prompt_column: bool, names: list[str]
) -> None:
    """A Parquet column whose type is not text where the job needs text (a list, a struct,
    a float prompt or key) exits 2 naming the column and its type instead of sending its
    Python form ("['a']", "1.5") as the prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data: dict[str, Any] = {
        "sku": ["mug-001", "lamp-101"],
        "title": ["a mug", "a lamp"],
        "colour": ["teal", "brass"],
        "prompt": ["a teal mug", "a brass lamp"],
    }
    data[column] = values
    pq.write_table(pa.table(data), e2e.tmp / "prompts.parquet")
    e2e.write_spec(input_path="prompts.parquet")
    if prompt_column:
        spec = e2e.spec_path.read_text(encoding="utf-8")
        spec = spec.replace(
            'prompt = "Studio photo of {title}, {colour}"', 'prompt_column = "prompt"'
        )
        e2e.spec_path.write_text(spec, encoding="utf-8")
    for command in ("plan", "submit"):
        result = e2e.invoke(command, str(e2e.spec_path))
        assert result.code == 2, (command, result.stdout, result.stderr)
        for name in names:
            assert name in result.stderr, (command, name, result.stderr)
    _assert_nothing_spent(e2e)


def test_parquet_numbers_in_a_template_are_formatted(e2e: Any) -> None:
    """Numbers and booleans in template values are fine: formatted by pyarrow (ints without
    ".0"), the same on every run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {"sku": pa.array([1, 2], pa.int64()), "title": ["a mug", "a lamp"], "colour": [1.5, 2.0]}
    )
    pq.write_table(table, e2e.tmp / "prompts.parquet")
    e2e.write_spec(input_path="prompts.parquet")
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    assert sorted(i["key"] for i in result.json()["items"]) == ["1", "2"]
    (date_dir,) = (e2e.tmp / "out" / "e2e-job").iterdir()
    manifest = pq.read_table(date_dir / "manifest.parquet").to_pylist()
    prompts = {row["key"]: row["prompt"] for row in manifest}
    assert prompts == {"1": "Studio photo of a mug, 1.5", "2": "Studio photo of a lamp, 2"}
