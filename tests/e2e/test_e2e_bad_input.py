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
