from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.adapters.inputs import (
    KEY,
    TEXT,
    UNDECODABLE,
    VALUE,
    check_column_types,
    check_columns,
    file_sha256,
    read_blocks,
    repeated_key_hashes,
    table_columns,
)
from pipeline.core.errors import InputError

CSV = b'sku,title,"multi\nline"\nA1,"Red, mug",x\nA2,,"q""z\nw"\n\nA3,Blue,\n'


def _values(path: Path, columns: list[str], **kw: object) -> list[tuple[int, dict]]:
    """(row number, {column: cell}) per row; a column the table lacks reads as None."""
    rows = []
    for block in read_blocks(path, columns, **kw):  # type: ignore[arg-type]
        assert all(len(cells) == block.size for cells in block.columns.values())
        for i in range(block.size):
            cells = {c: block.columns[c][i] if c in block.columns else None for c in columns}
            rows.append((block.first_row + i, cells))
    return rows


def test_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(CSV)
    assert table_columns(path) == ["sku", "title", "multi\nline"]
    assert _values(path, ["sku", "title", "multi\nline"]) == [
        (1, {"sku": "A1", "title": "Red, mug", "multi\nline": "x"}),
        (2, {"sku": "A2", "title": "", "multi\nline": 'q"z\nw'}),
        (3, {"sku": "A3", "title": "Blue", "multi\nline": ""}),
    ]


def test_csv_gz_and_missing_requested_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(CSV))
    assert table_columns(path)[0] == "sku"
    rows = _values(path, ["title", "aspect_ratio"])
    assert rows[0] == (1, {"title": "Red, mug", "aspect_ratio": None})
    assert len(rows) == 3


def test_bom_and_many_batches(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    body = "".join(f"k{i},{'p' * 50}{i}\n" for i in range(40_000))
    path.write_bytes(b"\xef\xbb\xbfid,prompt\n" + body.encode())
    assert table_columns(path) == ["id", "prompt"]
    assert len(list(read_blocks(path, ["id"]))) > 1
    rows = _values(path, ["id"])
    assert len(rows) == 40_000
    assert rows[0] == (1, {"id": "k0"}) and rows[-1] == (40_000, {"id": "k39999"})


def test_invalid_utf8_cell_spoils_only_that_cell(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,prompt\n1,ok\n2,bad \xff\xfe byte\n3,fine\n")
    rows = _values(path, ["id", "prompt"])
    assert rows == [
        (1, {"id": "1", "prompt": "ok"}),
        (2, {"id": "2", "prompt": UNDECODABLE}),
        (3, {"id": "3", "prompt": "fine"}),
    ]


def test_latin1(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes("clé,prompt\n1,café crème\n".encode("latin-1"))
    assert table_columns(path, "latin-1") == ["clé", "prompt"]
    assert _values(path, ["clé", "prompt"], encoding="latin-1") == [
        (1, {"clé": "1", "prompt": "café crème"})
    ]
    with pytest.raises(InputError, match="encoding"):
        table_columns(path)  # the header is not utf-8


def test_utf16_is_transcoded(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_bytes("id,prompt\n1,naïve ☃\n".encode("utf-16"))
    assert _values(path, ["prompt"], encoding="utf-16") == [(1, {"prompt": "naïve ☃"})]


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "prompt": ["a", None, "c"],
            "raw": pa.array([b"x", b"\xff", "é".encode()], pa.binary()),
            "score": [1.5, 2.0, None],
            "flag": [True, False, None],
            "cat": pa.array(["u", "v", "u"]).dictionary_encode(),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    assert table_columns(path) == ["id", "prompt", "raw", "score", "flag", "cat"]
    rows = _values(path, ["id", "prompt", "raw", "score", "flag", "cat", "nope"], batch_rows=2)
    assert [n for n, _ in rows] == [1, 2, 3]
    assert rows[0][1] == {
        "id": "1",
        "prompt": "a",
        "raw": "x",
        "score": "1.5",
        "flag": "true",
        "cat": "u",
        "nope": None,
    }
    assert rows[1][1]["prompt"] is None and rows[1][1]["raw"] is UNDECODABLE
    assert rows[1][1]["score"] == "2"
    assert rows[2][1]["raw"] == "é" and rows[2][1]["score"] is None


def test_check_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(CSV)
    assert check_columns(path, ["sku"], ["aspect_ratio", "title"]) == {"title"}
    with pytest.raises(InputError) as info:
        check_columns(path, ["sku", "colour", "background"])
    message = str(info.value)
    assert "'colour'" in message and "'background'" in message and "'title'" in message
    assert str(path) in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file.*\[input\] path"):
        table_columns(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(InputError, match=r"\.csv, \.csv\.gz, \.parquet"):
        table_columns(tmp_path / "t.xlsx")
    (tmp_path / "e.csv").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        table_columns(tmp_path / "e.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"bad\.parquet"):
        table_columns(tmp_path / "bad.parquet")
    (tmp_path / "ragged.csv").write_bytes(b"a,b\n1,2\n3,4,5\n")
    with pytest.raises(InputError, match=r"ragged\.csv"):
        list(read_blocks(tmp_path / "ragged.csv", ["a"]))


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(CSV)
    assert file_sha256(path) == hashlib.sha256(CSV).hexdigest()


def test_repeated_key_hashes(tmp_path: Path) -> None:
    """hash() of each key cell occurring more than once; blank and undecodable cells aside."""
    path = tmp_path / "keys.csv"
    path.write_bytes(b"id,p\na,1\nb,2\na,3\n,4\n,5\n\xff,6\n\xff,7\nc,8\nb,9\n")
    assert repeated_key_hashes(path, "id") == {hash("a"), hash("b"), hash("")}
    parquet = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"id": ["x", None, "y", None, "z"]}), parquet)
    assert repeated_key_hashes(parquet, "id") == frozenset()
    pq.write_table(pa.table({"id": ["k", "m", "k", "n", "k", "m"]}), parquet)  # k three times
    assert repeated_key_hashes(parquet, "id") == {hash("k"), hash("m")}
    pq.write_table(pa.table({"id": ["only"]}), parquet)
    assert repeated_key_hashes(parquet, "id") == frozenset()


# ── malformed tables are refused, not silently reshaped (issue 13, item 9) ──────────────


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_unterminated_quote_in_the_last_column_names_its_row(tmp_path: Path, ending: str) -> None:
    """A quote that never closes would swallow every later line into one value (and the
    rows would vanish): exit 2 naming the row where it opened and its column, whichever
    columns are read."""
    nl = ending or "\n"
    text = f'sku,prompt{nl}a,one{nl}b,"two{nl}c,three{nl}d,four{ending}'
    for name, data in (("t.csv", text.encode()), ("t.csv.gz", gzip.compress(text.encode()))):
        path = tmp_path / name
        path.write_bytes(data)
        for columns in (["sku", "prompt"], ["sku"]):
            with pytest.raises(InputError) as info:
                list(read_blocks(path, columns))
            message = str(info.value)
            assert name in message and "row 2" in message and "'prompt'" in message, message
            assert "quote" in message


def test_unterminated_quote_on_the_last_line_and_in_utf16(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'sku,prompt\na,one\nb,"two\n')
    with pytest.raises(InputError, match=r"row 2\b.*'prompt'"):
        list(read_blocks(path, ["sku", "prompt"]))
    wide = tmp_path / "w.csv"
    wide.write_bytes('id,prompt\n1,ok\n2,"na\u00efve\n3,x\n'.encode("utf-16"))
    with pytest.raises(InputError, match=r"row 2\b.*'prompt'"):
        list(read_blocks(wide, ["id", "prompt"], encoding="utf-16"))


def test_unterminated_quote_in_a_middle_column_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b'sku,prompt,n\na,one,1\nb,"two,2\nc,three,3\n')
    with pytest.raises(InputError) as info:
        list(read_blocks(path, ["sku"]))
    message = str(info.value)
    assert "row 2" in message and "'prompt'" in message and "quote" in message, message
    # What it swallows may be longer than any value Python's csv module reads.
    path.write_bytes(b'sku,prompt,n\na,one,1\nb,"two,2\n' + b"c,three,3\n" * 20_000)
    with pytest.raises(InputError, match=r"row 2\b.*'prompt'.*never ends"):
        list(read_blocks(path, ["sku"]))
    # A short last row whose quoted value does close is a short row, not an open quote.
    path.write_bytes(b'sku,prompt,n\na,one,1\nb,"two\nlines"\n')
    with pytest.raises(InputError, match=r"row 2 has 2 values where the header has 3"):
        list(read_blocks(path, ["sku"]))


@pytest.mark.parametrize("column", [0, 1])
def test_unterminated_quote_swallowing_more_than_a_block_names_its_row(
    tmp_path: Path, column: int
) -> None:
    """pyarrow gives up on a value longer than its 1 MiB block; the row is still named."""
    rows = [f"k{i},prompt number {i}".split(",") for i in range(120_000)]
    rows[70_000][column] = '"' + rows[70_000][column]
    path = tmp_path / "big.csv"
    path.write_text("id,prompt\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(InputError, match=r"row 70001\b.*never ends"):
        list(read_blocks(path, ["id"]))


def test_ragged_row_names_its_row(tmp_path: Path) -> None:
    """Rows are counted as the contract counts them: data rows, a quoted value's own line
    breaks and blank lines not counted."""
    path = tmp_path / "ragged.csv"
    path.write_bytes(b'a,b\n1,2\n"x\ny",4\n\n3,4,5\n6,7\n')
    with pytest.raises(InputError) as info:
        list(read_blocks(path, ["a"]))
    message = str(info.value)
    assert "ragged.csv" in message and "row 3" in message, message
    assert "3 values" in message and "header has 2" in message, message


def test_quoted_values_that_close_read_as_before(tmp_path: Path) -> None:
    """The end-of-table check changes nothing for well-formed files: a quoted multi-line
    last value with no final newline, CRLF endings, a header alone."""
    path = tmp_path / "t.csv"
    path.write_bytes(b'a,b\r\n1,"x\r\ny"\r\n2,"q""z"')
    assert _values(path, ["a", "b"]) == [
        (1, {"a": "1", "b": "x\r\ny"}),
        (2, {"a": "2", "b": 'q"z'}),
    ]
    path.write_bytes(b"a,b\n")
    assert _values(path, ["a", "b"]) == []
    path.write_bytes(b"a\n1\n\n2")
    assert _values(path, ["a"]) == [(1, {"a": "1"}), (2, {"a": "2"})]


def test_duplicate_header_of_a_column_the_job_reads(tmp_path: Path) -> None:
    """Two columns with one name the job reads: which one is meant is not known, so exit 2
    naming it. Duplicates the job does not read are left alone."""
    path = tmp_path / "t.csv"
    path.write_bytes(b"sku,prompt,prompt\na,one,two\n")
    with pytest.raises(InputError) as info:
        check_columns(path, ["sku", "prompt"])
    message = str(info.value)
    assert "'prompt'" in message and "columns 2 and 3" in message, message
    path.write_bytes(b"sku,prompt,aspect_ratio,aspect_ratio\na,one,1:1,16:9\n")
    with pytest.raises(InputError, match="'aspect_ratio'"):
        check_columns(path, ["sku", "prompt"], ["aspect_ratio"])
    path.write_bytes(b"sku,prompt,x,x,,\na,one,1,2,,\n")
    assert check_columns(path, ["sku", "prompt"], ["aspect_ratio"]) == set()
    parquet = tmp_path / "t.parquet"
    table = pa.Table.from_arrays(
        [pa.array(["a"]), pa.array(["x"]), pa.array(["y"])], ["k", "p", "p"]
    )
    pq.write_table(table, parquet)
    with pytest.raises(InputError, match="'p'"):
        check_columns(parquet, ["k", "p"])


def _typed_parquet(path: Path) -> Path:
    import datetime

    table = pa.table(
        {
            "s": ["a", "b"],
            "big": pa.array(["a", "b"], pa.large_string()),
            "cat": pa.array(["u", "v"]).dictionary_encode(),
            "raw": pa.array([b"x", b"y"], pa.binary()),
            "nothing": pa.array([None, None], pa.null()),
            "i": pa.array([1, 2], pa.int64()),
            "u8": pa.array([1, 2], pa.uint8()),
            "f": [1.5, float("nan")],
            "b": [True, False],
            "d": [datetime.date(2024, 1, 2), None],
            "l": [["a"], ["b", "c"]],
            "st": [{"x": 1}, {"x": 2}],
            "m": pa.array([[("k", "v")], []], pa.map_(pa.string(), pa.string())),
            "fsb": pa.array([b"ab", b"cd"], pa.binary(2)),
        }
    )
    pq.write_table(table, path)
    return path


def test_parquet_column_types_by_use(tmp_path: Path) -> None:
    """Text columns are text (string or binary decoded); keys are text or whole numbers;
    template values may also be numbers, booleans and dates. Anything else exits 2
    naming the column and its type."""
    path = _typed_parquet(tmp_path / "t.parquet")
    ok = {
        TEXT: ["s", "big", "cat", "raw", "nothing"],
        KEY: ["s", "big", "cat", "raw", "nothing", "i", "u8"],
        VALUE: ["s", "big", "cat", "raw", "nothing", "i", "u8", "f", "b", "d"],
    }
    every = ["s", "big", "cat", "raw", "nothing", "i", "u8", "f", "b", "d", "l", "st", "m", "fsb"]
    for use, good in ok.items():
        check_column_types(path, {name: use for name in good})
        for name in every:
            if name in good:
                continue
            with pytest.raises(InputError) as info:
                check_column_types(path, {"s": TEXT, name: use})
            message = str(info.value)
            assert f"'{name}'" in message and "t.parquet" in message, (use, name, message)
    with pytest.raises(InputError, match=r"'l'.*list<.*string>"):
        check_column_types(path, {"l": VALUE})
    with pytest.raises(InputError, match=r"'f'.*double"):
        check_column_types(path, {"f": TEXT})
    csv_path = tmp_path / "t.csv"
    csv_path.write_bytes(b"s,f\na,1.5\n")
    check_column_types(csv_path, {"s": TEXT, "f": KEY})  # CSV cells are all text


def test_parquet_values_are_never_python_reprs(tmp_path: Path) -> None:
    """A list column read as text fails naming the column instead of becoming "['a']"; a
    float NaN reads as an empty cell instead of "nan"."""
    path = _typed_parquet(tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"'l'.*list"):
        list(read_blocks(path, ["s", "l"]))
    assert [cells for _, cells in _values(path, ["f"])] == [{"f": "1.5"}, {"f": None}]
