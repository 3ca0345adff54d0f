"""The input table adapter: stream rows of .csv, .csv.gz and .parquet files with pyarrow.

Rows come in record batches, never the whole table in memory. CSV cells are read as raw
bytes and decoded here (a whole UTF-8 column checked at once by pyarrow, else cell by cell),
so one undecodable cell spoils one row (its value is
UNDECODABLE) and the rest go on. Encodings that are not ASCII-compatible (utf-16, utf-32)
are transcoded by pyarrow instead; there a bad byte fails the whole file. CSV empty cells
are "" (the core decides what empty means); Parquet nulls are None; non-text Parquet values
become text (ints without ".0", booleans "true"/"false"). Block and UNDECODABLE are defined by
the pure core (pipeline.expand), which consumes them, and re-exported here.
"""

from __future__ import annotations

import array
import codecs
import csv
import gzip
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.expand import UNDECODABLE, Block, Cell, variant_base
from pipeline.storage import sha256_file

__all__ = [
    "EXTENSIONS",
    "UNDECODABLE",
    "Block",
    "check_columns",
    "file_sha256",
    "read_blocks",
    "repeated_key_hashes",
    "table_columns",
]


EXTENSIONS: Final = (".csv", ".csv.gz", ".parquet")
_CSV_BLOCK_BYTES = 1 << 20


def _kind(path: Path) -> str:
    name = path.name.lower()
    for ext in (".csv.gz", ".csv", ".parquet"):
        if name.endswith(ext):
            if not path.exists():
                raise InputError(f"{path}: no such file; check [input] path in the job spec")
            return ext
    raise InputError(
        f"{path}: unknown table type {path.suffix or '(no extension)'!r}; "
        f"valid: {', '.join(EXTENSIONS)}"
    )


def _ascii_compatible(encoding: str) -> bool:
    try:
        return b'a,"\r\n'.decode(encoding) == 'a,"\r\n'
    except (UnicodeDecodeError, LookupError):
        return False


def _open_binary(path: Path, kind: str) -> IO[bytes]:
    if kind == ".csv.gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _csv_header(path: Path, kind: str, encoding: str) -> list[str]:
    try:
        with _open_binary(path, kind) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
            header = next(csv.reader(text), None)
    except (OSError, EOFError, csv.Error, LookupError, UnicodeError) as exc:
        raise InputError(f"{path}: cannot read the header row: {exc}") from exc
    if not header:
        raise InputError(f"{path}: empty file; the first row must name the columns")
    header[0] = header[0].removeprefix("\ufeff")
    for name in header:
        if any("\udc80" <= ch <= "\udcff" for ch in name):
            raise InputError(
                f"{path}: the header row does not decode as {encoding}; "
                "set [input] encoding to the file's encoding"
            )
    return header


def _parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from exc


def table_columns(path: Path, encoding: str = "utf-8") -> list[str]:
    """The table's column names; InputError naming the file when it cannot be read."""
    kind = _kind(path)
    if kind == ".parquet":
        return list(_parquet(path).schema_arrow.names)
    return _csv_header(path, kind, encoding)


def check_columns(
    path: Path, required: Sequence[str], optional: Sequence[str] = (), encoding: str = "utf-8"
) -> set[str]:
    """Raise InputError naming each missing required column; return the optional ones present."""
    present = table_columns(path, encoding)
    missing = [c for c in dict.fromkeys(required) if c not in present]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise InputError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {names} "
            f"(needed by the job spec); the table has: {', '.join(repr(c) for c in present)}"
        )
    return {c for c in optional if c in present}


def _decode(cells: list[bytes | None], encoding: str) -> list[Cell]:
    out: list[Cell] = []
    for cell in cells:
        if cell is None:
            out.append(None)
            continue
        try:
            out.append(cell.decode(encoding))
        except UnicodeDecodeError:
            out.append(UNDECODABLE)
    return out


def _decode_column(array: pa.Array, encoding: str) -> list[Cell]:
    """A raw-bytes column as text cells. UTF-8 is checked by pyarrow for the whole column at
    once; only a column with a bad cell in it is decoded cell by cell (to find which)."""
    if codecs.lookup(encoding).name == "utf-8":
        text = pa.large_string() if pa.types.is_large_binary(array.type) else pa.string()
        try:
            return array.cast(text).to_pylist()  # type: ignore[no-any-return]
        except pa.ArrowInvalid:
            pass
    return _decode(array.to_pylist(), encoding)


def _csv_reader(
    path: Path, kind: str, encoding: str, wanted: list[str]
) -> tuple[pacsv.CSVStreamingReader, str | None]:
    """A streaming reader of raw-bytes columns, and the encoding its cells are in (if moved)."""
    source = pa.input_stream(str(path), compression="gzip" if kind == ".csv.gz" else None)
    transcode = not _ascii_compatible(encoding)
    read_options = pacsv.ReadOptions(
        autogenerate_column_names=True,
        block_size=_CSV_BLOCK_BYTES,
        encoding=encoding if transcode else "utf8",
    )
    convert = pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in wanted}, include_columns=wanted
    )
    parse = pacsv.ParseOptions(newlines_in_values=True)
    return pacsv.open_csv(source, read_options, parse, convert), ("utf-8" if transcode else None)


def _read_csv(path: Path, kind: str, columns: Sequence[str], encoding: str) -> Iterator[Block]:
    """pyarrow sees the header as data row 0 (generated names f0, f1, ...) and it is skipped."""
    header = _csv_header(path, kind, encoding)
    index = {name: header.index(name) for name in columns if name in header}
    wanted = sorted({f"f{i}" for i in index.values()}) or ["f0"]
    reader, cell_encoding = _csv_reader(path, kind, encoding, wanted)
    first_row = 0
    for batch in reader:
        if first_row == 0:
            batch, first_row = batch.slice(1), 1
        cols = {
            name: _decode_column(batch.column(f"f{i}"), cell_encoding or encoding)
            for name, i in index.items()
        }
        if batch.num_rows:
            yield Block(first_row, batch.num_rows, cols)
        first_row += batch.num_rows


def _to_cells(array: pa.ChunkedArray | pa.Array, encoding: str) -> list[Cell]:
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)  # type: ignore[union-attr]
        kind = array.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _decode_column(array, encoding)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            array = pc.cast(array, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            return [None if v is None else str(v) for v in array.to_pylist()]
    return array.to_pylist()


def _read_parquet(
    path: Path, columns: Sequence[str], encoding: str, batch_rows: int
) -> Iterator[Block]:
    parquet = _parquet(path)
    present = [c for c in dict.fromkeys(columns) if c in parquet.schema_arrow.names]
    first_row = 1
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
        cols = {name: _to_cells(batch.column(name), encoding) for name in present}
        yield Block(first_row, batch.num_rows, cols)
        first_row += batch.num_rows


def read_blocks(
    path: Path, columns: Sequence[str], encoding: str = "utf-8", batch_rows: int = 65536
) -> Iterator[Block]:
    """Stream the table in blocks of rows holding only `columns` (absent ones are left out).

    Parquet blocks hold `batch_rows` rows; CSV blocks are pyarrow's, about 1 MB of text.
    """
    kind = _kind(path)
    try:
        if kind == ".parquet":
            yield from _read_parquet(path, columns, encoding, batch_rows)
        else:
            yield from _read_csv(path, kind, columns, encoding)
    except (OSError, EOFError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read the table: {exc}") from exc


def repeated_key_hashes(
    path: Path, column: str, encoding: str = "utf-8", variants: int = 1
) -> frozenset[int]:
    """hash() of every text cell of `column` that occurs more than once in the table (this
    process's hash; a collision only adds a key that is then checked exactly).

    A pre-pass over the key column alone, so the row pass need not remember every key it has
    seen to find duplicates: 8 bytes a row here, where a dict of a million keys held 124 MB.
    With variants, a key `K.vn` (n <= variants) also counts as an occurrence of `K`: the row
    `K` claims it, so both rows must be remembered (`expand.variant_base`)."""
    hashes = array.array("q")
    for block in read_blocks(path, [column], encoding):
        cells = block.columns.get(column, ())
        hashes.extend(hash(cell) for cell in cells if isinstance(cell, str))
        if variants > 1:
            bases = (variant_base(cell, variants) for cell in cells if isinstance(cell, str))
            hashes.extend(hash(base) for base in bases if base is not None)
    if not hashes:
        return frozenset()
    values = pa.Array.from_buffers(pa.int64(), len(hashes), [None, pa.py_buffer(hashes)])
    counts = pc.value_counts(values)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    return frozenset(repeated.to_pylist())


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes (part of a run's identity)."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
