"""The column-wise report path gives exactly what the row-by-row one did: rows, summary,
JSON text and Parquet tables (issue 19: report a million items without a Python object
per field; the output of every format stays byte for byte)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import StaticPool

from benchmarks.common import fill_finished_run
from pipeline.adapters import writers
from pipeline.adapters.ledger import repo
from pipeline.adapters.ledger.models import Base
from pipeline.core import report
from pipeline.core.catalog import load_catalog

RUN = "unit-report"


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An in-memory ledger with a finished run of 60 items in every state, some with several
    attempts, a fallback model, duplicates, references, seeds and cached images."""
    eng = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(eng)
    fill_finished_run(eng, RUN, 60)
    with eng.begin() as conn:
        for statement in (
            "UPDATE items SET state='failed', final=1, error='grpc 8: =x', uri=NULL "
            "WHERE id % 7 = 0",
            "UPDATE items SET state='queued', uri=NULL WHERE id % 11 = 0",
            "UPDATE items SET state='in_batch', uri=NULL WHERE id % 13 = 0",
            "UPDATE items SET state='cancelled', uri=NULL, error='run cancelled' WHERE id % 17 = 0",
            "UPDATE items SET cached=1 WHERE id % 5 = 0 AND state='succeeded'",
            "UPDATE items SET refs='aa,bb', seed=id * 3 WHERE id % 3 = 0",
            "UPDATE items SET key='caf\u00e9 \u202e\x1b' WHERE id = 2",
            "UPDATE attempts SET model='gemini-2.5-flash-image', cost_nanos=123456789 "
            "WHERE item_id % 6 = 0",
            "INSERT INTO attempts (item_id, batch_id, model, outcome, input_tokens, "
            "output_image_tokens, output_text_tokens, thinking_tokens, cost_nanos, "
            "standard_nanos, duplicate) SELECT item_id, batch_id, model, 'duplicate', 1, 2, "
            "3, 4, 5, 6, 1 FROM attempts WHERE item_id % 9 = 0",
            "DELETE FROM attempts WHERE item_id % 19 = 0",
        ):
            conn.execute(text(statement))
    yield eng
    eng.dispose()


def _by_rows(engine: Engine, **kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    summary = report.Summary()
    with engine.connect() as conn:
        rows = list(report.rows_and_summary(repo.report_rows(conn, RUN, **kw), summary))
    return rows, summary.asdict()


def _by_columns(
    engine: Engine, chunk: int, **kw: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    summary = report.Summary()
    with engine.connect() as conn:
        chunks = report.columns_and_summary(repo.report_columns(conn, RUN, chunk, **kw), summary)
        rows = [row for columns in chunks for row in report.rows_of(columns)]
    return rows, summary.asdict()


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_columns_give_the_rows_and_summary_of_item_row(engine: Engine, chunk: int) -> None:
    """Every row (values and key order) and the summary, in chunks of any size."""
    rows, summary = _by_rows(engine)
    assert _by_columns(engine, chunk) == (rows, summary)
    assert [list(r) for r in rows] == [list(report.ITEM_FIELDS)] * len(rows)
    assert {r["status"] for r in rows} == {"succeeded", "failed", "pending", "cancelled"}
    assert _by_columns(engine, 5, finished_only=True) == _by_rows(engine, finished_only=True)


def test_manifest_columns_add_prompt_ratio_and_the_size_sent(engine: Engine) -> None:
    catalog = load_catalog()
    with engine.connect() as conn:
        expected = [
            report.item_row(e["item"], e)
            | {
                "prompt": e["item"].prompt,
                "aspect_ratio": e["item"].aspect_ratio,
                "image_size": report.size_sent(
                    catalog, report.item_row(e["item"], e)["model"], e["item"].image_size
                ),
            }
            for e in repo.report_rows(conn, RUN, finished_only=True)
        ]
        got = [
            row
            for chunk in repo.report_columns(conn, RUN, 9, finished_only=True, manifest=True)
            for row in report.rows_of(
                report.manifest_columns(chunk, report.item_columns(chunk), catalog),
                writers.MANIFEST_SCHEMA.names,
            )
        ]
    assert got == expected


WEIRD: list[Any] = [
    "plain",
    'caf\u00e9 \u202e \x1b \n "q" \\ \ud83d\ude00',
    "",
    None,
    0,
    -12,
    10**20,
    True,
    False,
    0.1,
    1e-7,
    2.5e20,
    float("nan"),
    float("inf"),
    [],
    ["a", "\u00e9"],
    [1, None],
    {"k": 1},
]


@pytest.mark.parametrize(
    "column",
    [
        WEIRD,
        ["a", None, "b"],
        [1, 2, None],
        [0.5, None, 0.25],
        [True, False, None],
        [None, None],
        [[], ["x"], None],
        [1.0, math.pi],
    ],
)
def test_json_lines_are_json_dumps_of_each_row(column: list[Any]) -> None:
    """The column-at-a-time encoder writes what json.dumps writes, whatever the values."""
    columns = {"a": column, "b": list(reversed(column))}
    rows = [{"a": a, "b": b} for a, b in zip(column, reversed(column), strict=True)]
    assert writers.json_lines(columns, ("a", "b")) == [json.dumps(r) for r in rows]


def test_parquet_from_columns_is_the_parquet_from_rows(engine: Engine, tmp_path: Path) -> None:
    rows, _ = _by_rows(engine)
    writers.write_parquet(rows, tmp_path / "rows.parquet", writers.REPORT_SCHEMA, batch_rows=7)
    with engine.connect() as conn:
        chunks = map(report.item_columns, repo.report_columns(conn, RUN, 7))
        count = writers.write_parquet_columns(
            chunks, tmp_path / "cols.parquet", writers.REPORT_SCHEMA
        )
    assert count == len(rows)
    assert (tmp_path / "rows.parquet").read_bytes() == (tmp_path / "cols.parquet").read_bytes()
    assert pq.read_table(tmp_path / "cols.parquet").to_pylist() == rows


def test_parquet_from_columns_refuses_a_null_where_the_schema_has_none(tmp_path: Path) -> None:
    columns = {"key": ["a", None], "status": ["ok", "ok"], "attempts": [1, 1]}
    with pytest.raises(ValueError, match="row 2: column 'key' must not be null"):
        writers.write_parquet_columns([columns], tmp_path / "m.parquet")
