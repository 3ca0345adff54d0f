from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.adapters.inputs import (
    UNDECODABLE,
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
