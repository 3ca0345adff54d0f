"""Streaming writers for the run's tables: manifest.parquet and rejects.csv.

Owns `MANIFEST_SCHEMA` (the report's item fields plus prompt, aspect_ratio, image_size), the
merged forms a location shared by several runs gets (a `run` column added last), and the
writers. Rows are written in record batches as they arrive, so memory does not grow
with the number of rows. Writers produce a local file; the caller stores it with
`ObjectStore.put_file`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
CSV_CONTENT_TYPE = "text/csv"
REJECTS_HEADER = ("row", "key", "reason")

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
