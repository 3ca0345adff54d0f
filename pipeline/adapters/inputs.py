"""The input table adapter: stream rows of .csv, .csv.gz and .parquet files with pyarrow.

Rows come in record batches, never the whole table in memory. CSV cells are read as raw
bytes and decoded here (a whole UTF-8 column checked at once by pyarrow, else cell by cell),
so one undecodable cell spoils one row (its value is
UNDECODABLE) and the rest go on. Encodings that are not ASCII-compatible (utf-16, utf-32)
are transcoded by pyarrow instead; there a bad byte fails the whole file. CSV empty cells
are "" (the core decides what empty means); Parquet nulls (and float NaN) are None; non-text
Parquet values become text (ints without ".0", booleans "true"/"false"). Block and
UNDECODABLE are defined by the pure core (pipeline.core.table), which consumes them, and
re-exported here.

A table is read as it is written or refused (InputError, exit 2), never reshaped: a CSV row
with too many or too few values, a quote that never closes (it would swallow every later
line into one value), two columns of one name the job reads, a Parquet column whose type
cannot be the text the job makes of it. The checks are per file, schema or block, never a
Python step per row: the end of a CSV is proved by a sentinel row appended to the stream,
which an open quote swallows.
"""

from __future__ import annotations

import array
import codecs
import csv
import gzip
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.adapters.storage import sha256_file
from pipeline.core.errors import InputError
from pipeline.core.table import UNDECODABLE, Block, Cell, variant_base

__all__ = [
    "EXTENSIONS",
    "KEY",
    "TEXT",
    "UNDECODABLE",
    "VALUE",
    "Block",
    "check_column_types",
    "check_columns",
    "file_sha256",
    "read_blocks",
    "repeated_key_hashes",
    "table_columns",
]


EXTENSIONS: Final = (".csv", ".csv.gz", ".parquet")
_CSV_BLOCK_BYTES = 1 << 20
_END_MARK: Final = b"\x00nanobatch:end-of-table\x00"
"""Every value of the sentinel row appended to a CSV stream: no table holds it."""
_END_TEXT: Final = _END_MARK.decode()

TEXT: Final = "text"
"""A column taken as it is: the prompt column, aspect_ratio, image_size."""
KEY: Final = "key"
"""The id column: text, or whole numbers (written without ".0")."""
VALUE: Final = "value"
"""A prompt template's value: text, numbers, booleans, dates and times, as pyarrow formats
them (the same text on every run)."""


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
    _check_unique(path, present, [*required, *optional])
    missing = [c for c in dict.fromkeys(required) if c not in present]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise InputError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {names} "
            f"(needed by the job spec); the table has: {', '.join(repr(c) for c in present)}"
        )
    return {c for c in optional if c in present}


def _check_unique(path: Path, present: Sequence[str], used: Sequence[str]) -> None:
    """InputError naming a column the job reads that the header names more than once (which
    one is meant is unknown). Repeated names the job does not read are left alone."""
    for name in dict.fromkeys(used):
        places = [str(i) for i, column in enumerate(present, 1) if column == name]
        if len(places) > 1:
            raise InputError(
                f"{path}: column {name!r} appears {len(places)} times in the header (columns "
                f"{', '.join(places[:-1])} and {places[-1]}); the job reads it, so give the "
                "other columns other names"
            )


def check_column_types(path: Path, uses: Mapping[str, str]) -> None:
    """InputError naming the column and its type when a Parquet column cannot be what the
    job uses it for (`uses`: column -> TEXT, KEY or VALUE; absent columns are skipped): a
    list, struct or map never; a number as a prompt never; a float or a date as a key
    never (its text is not a stable identity). CSV cells are all text: nothing to check."""
    if _kind(path) != ".parquet":
        return
    schema = _parquet(path).schema_arrow
    for name, use in uses.items():
        if name not in schema.names:
            continue
        kind = schema.field(name).type
        if not _fits(kind, use):
            raise InputError(f"{path}: column {name!r} is {kind}; {_WANTED[use]}")


_WANTED: Final = {
    TEXT: "the job takes it as text, so it must hold strings",
    KEY: "item keys must be strings or whole numbers: write it as string or int64",
    VALUE: (
        "a prompt template takes strings, numbers, booleans, dates or times: "
        "write it as one of those"
    ),
}


_TEXT_TYPES: Final = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,  # decoded with [input] encoding, as CSV cells are
    pa.types.is_large_binary,
    pa.types.is_null,  # every cell empty
)
_KEY_TYPES: Final = (*_TEXT_TYPES, pa.types.is_integer)
_ACCEPTED: Final = {
    TEXT: _TEXT_TYPES,
    KEY: _KEY_TYPES,
    VALUE: (
        *_KEY_TYPES,
        pa.types.is_floating,
        pa.types.is_decimal,
        pa.types.is_boolean,
        pa.types.is_date,
        pa.types.is_time,
        pa.types.is_timestamp,
    ),
}


def _fits(kind: pa.DataType, use: str) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(test(kind) for test in _ACCEPTED[use])


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


class _Ended:
    """A byte stream followed by `tail` (read by pyarrow, a block at a time)."""

    def __init__(self, stream: pa.NativeFile, tail: bytes) -> None:
        self._stream: pa.NativeFile | None = stream
        self._tail = tail
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        size = -1 if size is None else size
        if self._stream is not None:
            data = self._stream.read(size if size >= 0 else None)
            if data:
                return data  # type: ignore[no-any-return]
            self._stream.close()
            self._stream = None
        size = len(self._tail) if size < 0 else size
        data, self._tail = self._tail[:size], self._tail[size:]
        return data

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.closed = True


def _csv_reader(
    path: Path,
    kind: str,
    encoding: str,
    wanted: list[str],
    width: int,
    on_invalid: Callable[[Any], str],
) -> tuple[pacsv.CSVStreamingReader, str | None]:
    """A streaming reader of raw-bytes columns, and the encoding its cells are in (if moved).

    The file is followed by a sentinel row of `width` values (_END_MARK each): the last row
    read is the sentinel unless a quote left open swallowed it."""
    source = pa.input_stream(str(path), compression="gzip" if kind == ".csv.gz" else None)
    transcode = not _ascii_compatible(encoding)
    if transcode:  # what pyarrow does for ReadOptions(encoding=...), so the sentinel is UTF-8
        source = pa.transcoding_input_stream(source, encoding, "utf-8")
    sentinel = b"\n" + b",".join([_END_MARK] * width) + b"\n"
    read_options = pacsv.ReadOptions(
        autogenerate_column_names=True, block_size=_CSV_BLOCK_BYTES, encoding="utf8"
    )
    convert = pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in wanted}, include_columns=wanted
    )
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid)
    reader = pacsv.open_csv(_Ended(source, sentinel), read_options, parse, convert)
    return reader, ("utf-8" if transcode else None)


@dataclass
class _BadRow:
    """What pyarrow said of the first row with the wrong number of values."""

    values: int
    swallowed: bool
    """It holds the sentinel: a quote in it never closes."""


def _read_csv(path: Path, kind: str, columns: Sequence[str], encoding: str) -> Iterator[Block]:
    """pyarrow sees the header as data row 0 (generated names f0, f1, ...) and it is skipped;
    the sentinel row after the last is dropped, and its absence is an open quote."""
    header = _csv_header(path, kind, encoding)
    index = {name: header.index(name) for name in columns if name in header}
    wanted = sorted({f"f{i}" for i in index.values()}) or ["f0"]
    bad: list[_BadRow] = []

    def on_invalid(row: Any) -> str:
        bad.append(_BadRow(row.actual_columns, _END_TEXT in row.text))
        return "error"

    first_row, ended = 0, False
    try:
        reader, cell_encoding = _csv_reader(path, kind, encoding, wanted, len(header), on_invalid)
        for batch in reader:
            if first_row == 0:
                batch, first_row = batch.slice(1), 1
            last = batch.num_rows - 1
            if last >= 0 and batch.column(0)[last].as_py() == _END_MARK:
                batch, ended = batch.slice(0, last), True
            cols = {
                name: _decode_column(batch.column(f"f{i}"), cell_encoding or encoding)
                for name, i in index.items()
            }
            if batch.num_rows:
                yield Block(first_row, batch.num_rows, cols)
            first_row += batch.num_rows
    except pa.ArrowInvalid as exc:
        if bad:
            raise _malformed(path, kind, encoding, header, bad[0]) from None
        row = _row_of_wrong_width(path, kind, encoding, len(header))
        if row is None:
            raise
        # pyarrow gives up on a value longer than a block (1 MiB): in a prompt table, a
        # quote that never closes.
        raise InputError(
            f"{path}: row {row}: a quoted value there never ends ({exc}); close the quote "
            '(a quote inside a quoted value is written twice: "")'
        ) from None
    if not ended:
        raise _open_quote(path, first_row - 1, header[-1])


def _open_quote(path: Path, row: int | None, column: str) -> InputError:
    where = "the header row" if row == 0 else f"row {row or '?'}"
    return InputError(
        f"{path}: {where}: the quoted value in column {column!r} never ends, so every "
        "line after it would be read into it; close the quote (a quote inside a quoted "
        'value is written twice: "")'
    )


def _malformed(path: Path, kind: str, encoding: str, header: list[str], bad: _BadRow) -> InputError:
    """A row with the wrong number of values, named by its data row (pyarrow does not know
    it: found again by Python's csv module, on this error path only)."""
    row = _row_of_wrong_width(path, kind, encoding, len(header))
    if bad.swallowed:
        return _open_quote(path, row, header[max(bad.values, 1) - 1])
    return InputError(
        f"{path}: row {row or '?'} has {bad.values} values where the header has "
        f'{len(header)}; quote a value that holds a comma ("a, b")'
    )


def _row_of_wrong_width(path: Path, kind: str, encoding: str, width: int) -> int | None:
    """The data row number of the first row whose number of values is not `width` (or that
    Python's csv module cannot read); blank lines are skipped as pyarrow skips them."""
    row = 0
    try:
        with _open_binary(path, kind) as raw:
            text = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
            records = csv.reader(text)
            next(records, None)
            for record in records:
                if record:
                    row += 1
                    if len(record) != width:
                        return row
    except csv.Error:  # e.g. a field over the module's size limit: an open quote
        return row + 1
    except (OSError, EOFError, LookupError, UnicodeError):
        return None
    return None


def _to_cells(
    path: Path, name: str, array: pa.ChunkedArray | pa.Array, encoding: str
) -> list[Cell]:
    kind = array.type
    if pa.types.is_dictionary(kind):
        array = array.cast(kind.value_type)  # type: ignore[union-attr]
        kind = array.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _decode_column(array, encoding)
    if pa.types.is_floating(kind):  # NaN is how many writers say "missing"
        array = pc.if_else(pc.is_nan(array), pa.scalar(None, kind), array)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        if not _fits(kind, VALUE):  # a list or struct would come out as its Python repr
            raise InputError(f"{path}: column {name!r} is {kind}; {_WANTED[VALUE]}")
        array = pc.cast(array, pa.string())
    return array.to_pylist()  # type: ignore[no-any-return]


def _read_parquet(
    path: Path, columns: Sequence[str], encoding: str, batch_rows: int
) -> Iterator[Block]:
    parquet = _parquet(path)
    present = [c for c in dict.fromkeys(columns) if c in parquet.schema_arrow.names]
    first_row = 1
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
        cols = {name: _to_cells(path, name, batch.column(name), encoding) for name in present}
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
    except (OSError, EOFError, UnicodeError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read the table: {exc}") from exc


def repeated_key_hashes(
    path: Path, column: str, encoding: str = "utf-8", variants: int = 1
) -> frozenset[int]:
    """hash() of every text cell of `column` that occurs more than once in the table (this
    process's hash; a collision only adds a key that is then checked exactly).

    A pre-pass over the key column alone, so the row pass need not remember every key it has
    seen to find duplicates: 8 bytes a row here (24 while they are sorted), where a dict of a
    million keys held 124 MB.
    With variants, a key `K.vn` (n <= variants) also counts as an occurrence of `K`: the row
    `K` claims it, so both rows must be remembered (`table.variant_base`)."""
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
    # Sorted, a repeated value sits beside itself. Sorting takes 16 bytes a row more, where
    # value_counts' hash table took about 100 bytes a row: at a million rows the pre-pass
    # peaked at 163 MiB of RSS against 258 MiB, in half the time.
    ordered = pc.take(values, pc.array_sort_indices(values))
    del values, hashes
    repeated = pc.filter(ordered[1:], pc.equal(ordered[1:], ordered[:-1]))
    return frozenset(repeated.to_pylist())


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes (part of a run's identity)."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
