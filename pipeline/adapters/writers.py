"""The file formats of reports and of the run's tables, written as the rows stream in.

`report` in json, jsonl, csv, table and parquet (`REPORT_SCHEMA`), and the tables beside the
images: manifest.parquet (`MANIFEST_SCHEMA`: the report's item fields plus prompt,
aspect_ratio, image_size) and rejects.csv, with the merged forms a location shared by several
runs gets (a `run` column added last). What the rows hold is `core.report`'s; this module
only writes them. Rows come as column chunks (`core.report.Columns`) where a format can take
them whole (parquet from arrays, jsonl a chunk per write) or as dicts; either way memory does
not grow with the number of rows. The table writers produce a local file; the caller stores
it with `ObjectStore.put_file`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.adapters.drill import crashpoint
from pipeline.core import report

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
CSV_CONTENT_TYPE = "text/csv"
REJECTS_HEADER = ("row", "key", "reason")

REPORT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int64()),
        ("model", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_image_tokens", pa.int64()),
        ("output_text_tokens", pa.int64()),
        ("thinking_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("cached", pa.bool_()),
        ("error", pa.string()),
        ("references", pa.list_(pa.string())),
        ("seed", pa.int64()),
        ("duplicates", pa.int64()),
    ]
)
"""`report --format parquet`: the report's item fields."""

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("attempts", pa.int64(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_image_tokens", pa.int64()),
        pa.field("output_text_tokens", pa.int64()),
        pa.field("thinking_tokens", pa.int64()),
        pa.field("cost_usd", pa.float64()),
        pa.field("cached", pa.bool_()),
        pa.field("error", pa.string()),
        pa.field("references", pa.list_(pa.string())),
        pa.field("seed", pa.int64()),
        pa.field("duplicates", pa.int64()),
        pa.field("prompt", pa.string()),
        pa.field("aspect_ratio", pa.string()),
        pa.field("image_size", pa.string()),
    ]
)
"""One row per harvested item. key, status and attempts are never null; uri and sha256 are
null for an item with no stored image, error is null for a success; references are the
reference images' sha256s in order (empty for none), seed is null without variants."""

MERGED_MANIFEST_SCHEMA = MANIFEST_SCHEMA.append(pa.field("run", pa.string(), nullable=False))
"""manifest.parquet at a location several runs share: every run's rows, each with its run."""
MERGED_REJECTS_HEADER = (*REJECTS_HEADER, "run")
"""rejects.csv at a location several runs share: every run's rejects, each with its run."""


def _chunks(
    rows: Iterable[Mapping[str, object]], size: int
) -> Iterator[list[Mapping[str, object]]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def write_parquet(
    rows: Iterable[Mapping[str, object]],
    path: Path,
    schema: pa.Schema = MANIFEST_SCHEMA,
    batch_rows: int = 10_000,
) -> int:
    """Stream `rows` (dicts keyed by column name) to a Parquet file; return the row count.

    Keys missing from a row are null; keys not in the schema are ignored. A row with a null
    in a non-nullable column raises ValueError naming the column. An empty `rows` still
    writes a valid file with the schema.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    count = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for chunk in _chunks(rows, batch_rows):
            batch = pa.RecordBatch.from_pylist(chunk, schema=schema)
            _check_not_null(batch, schema, count)
            writer.write_batch(batch)
            count += batch.num_rows
    return count


def write_parquet_columns(
    chunks: Iterable[Mapping[str, Sequence[Any]]],
    path: Path,
    schema: pa.Schema = MANIFEST_SCHEMA,
    each_row: Callable[[], None] | None = None,
) -> int:
    """`write_parquet` for rows given as column chunks (one record batch, so one row group,
    per chunk; columns not in the schema are ignored, missing ones are null): the arrays
    are built from the column lists, with no dict per row. `each_row` is called once per
    row written (a kill drill's crash point)."""
    count = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for chunk in chunks:
            rows = len(next(iter(chunk.values()))) if chunk else 0
            if not rows:
                continue
            arrays = [
                pa.array(chunk[f.name], type=f.type) if f.name in chunk else pa.nulls(rows, f.type)
                for f in schema
            ]
            batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
            _check_not_null(batch, schema, count)
            if each_row is not None:
                for _ in range(rows):
                    each_row()
            writer.write_batch(batch)
            count += rows
    return count


def _check_not_null(batch: pa.RecordBatch, schema: pa.Schema, offset: int) -> None:
    for index, field in enumerate(schema):
        column = batch.column(index)
        if not field.nullable and column.null_count:
            first = column.is_null().to_pylist().index(True)
            raise ValueError(f"row {offset + first + 1}: column {field.name!r} must not be null")


def write_csv(
    rows: Iterable[Mapping[str, object] | Sequence[object]],
    path: Path,
    header: Sequence[str] = REJECTS_HEADER,
) -> int:
    """Stream rows to a UTF-8 CSV file with `header` as its first line; return the row count.

    A row is a mapping (values taken by header name, missing ones empty) or a sequence in
    header order. None is written as an empty cell.
    """
    count = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            values = [row.get(name) for name in header] if isinstance(row, Mapping) else row
            writer.writerow(["" if value is None else value for value in values])
            count += 1
    return count


# ── report formats ───────────────────────────────────────────────────────────


def write_jsonl(stream: IO[str], chunks: Iterable[report.Columns]) -> None:
    """One JSON object per item and line (as `json.dumps` writes it), a chunk per write."""
    for columns in chunks:
        stream.write("".join([line + "\n" for line in json_lines(columns)]))


def write_json(
    stream: IO[str], head: Mapping[str, Any], chunks: Iterable[report.Columns], summary: Any
) -> None:
    """One JSON object: `head`'s keys, then `items` written item by item (the array is never
    held whole), then `summary` (a `report.Summary`, complete once the items are written)."""
    stream.write(json.dumps(dict(head))[:-1])
    stream.write(', "items": [')
    first = True
    for columns in chunks:
        for line in json_lines(columns):
            crashpoint("report.row")
            stream.write(("\n  " if first else ",\n  ") + line)
            first = False
    stream.write('\n], "summary": ' + json.dumps(summary.asdict()) + "}\n")


def json_lines(
    columns: Mapping[str, Sequence[Any]], names: Sequence[str] = report.ITEM_FIELDS
) -> list[str]:
    """Each row of a column chunk as `json.dumps` of its dict (keys `names`, in order) would
    write it, built a column at a time: each column's cells are encoded by one C function
    mapped over the column, then one template joins a row's cells, so no encoder is set up
    per row and no Python runs per field."""
    template = "{" + ", ".join(json.dumps(name) + ": %s" for name in names) + "}"
    cells = [_json_cells(columns[name]) for name in names]
    return [template % row for row in zip(*cells, strict=True)]


_CELL: dict[type, Callable[[Any], str]] = {
    str: encode_basestring_ascii,
    int: int.__repr__,
    bool: {True: "true", False: "false"}.__getitem__,
}


def _json_cells(values: Sequence[Any]) -> list[str]:
    """The values of one column, each as `json.dumps` writes it."""
    kinds = set(map(type, values))
    nullable = type(None) in kinds
    kinds.discard(type(None))
    if not kinds:
        return ["null"] * len(values)
    kind = kinds.pop() if len(kinds) == 1 else None
    cell = _CELL.get(kind) if kind is not None else None
    if kind is float and all(map(math.isfinite, (v for v in values if v is not None))):
        cell = float.__repr__
    if kind is list:
        cell = _json_list
    if cell is None:  # mixed or other types: the encoder itself
        cell = json.dumps
    if nullable:
        return ["null" if value is None else cell(value) for value in values]
    return list(map(cell, values))


def _json_list(value: list[Any]) -> str:
    if not value:
        return "[]"
    if all(type(v) is str for v in value):
        return "[" + ", ".join(map(encode_basestring_ascii, value)) + "]"
    return json.dumps(value)


def write_report_csv(stream: IO[str], chunks: Iterable[report.Columns]) -> None:
    """The report as CSV: references comma-separated, formula-like cells made text."""
    writer = csv.DictWriter(stream, fieldnames=list(report.ITEM_FIELDS))
    writer.writeheader()
    for columns in chunks:
        writer.writerows(report.csv_row(report.flat_row(row)) for row in report.rows_of(columns))


def write_table(
    stream: IO[str], title: str, chunks: Iterable[report.Columns], footer: Callable[[], str]
) -> None:
    """The text table: `title`, the header, a line per item, then `footer()` (called once
    the items are written, when the summary is complete)."""
    stream.write(title + "\n")
    stream.write(report.TABLE_HEADER + "\n")
    for columns in chunks:
        for row in report.rows_of(columns):
            crashpoint("report.row")
            stream.write(report.table_line(row) + "\n")
    stream.write(footer())
