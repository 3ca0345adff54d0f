from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.errors import SpecError
from pipeline.core.shard import (
    DEFAULT_MAX_BYTES,
    Packer,
    ShardLimits,
    limits_for,
    pack,
    quota_windows,
)
from pipeline.core.spec_parse import parse_spec


def _pack(entries: list[tuple[int, int]], limits: ShardLimits) -> list[list[tuple[int, int]]]:
    return list(pack(entries, size=lambda e: e[0], tokens=lambda e: e[1], limits=limits))


def test_pack_by_requests() -> None:
    shards = _pack([(1, 1)] * 7, ShardLimits(3, 1000, 1000))
    assert [len(s) for s in shards] == [3, 3, 1]


def test_pack_by_bytes() -> None:
    shards = _pack([(4, 1), (4, 1), (4, 1), (2, 1)], ShardLimits(100, 10, 1000))
    assert shards == [[(4, 1), (4, 1)], [(4, 1), (2, 1)]]


def test_pack_by_tokens_exactly_full() -> None:
    shards = _pack([(1, 5), (1, 5), (1, 5)], ShardLimits(100, 100, 10))
    assert shards == [[(1, 5), (1, 5)], [(1, 5)]]


def test_pack_keeps_order_and_streams() -> None:
    def gen():
        for i in range(10):
            yield (1, i)

    shards = list(pack(gen(), size=lambda e: e[0], tokens=lambda e: 1, limits=ShardLimits(4, 9, 9)))
    assert [e[1] for s in shards for e in s] == list(range(10))
    assert list(pack([], size=len, tokens=len, limits=ShardLimits(1, 1, 1))) == []


def test_single_entry_over_a_limit() -> None:
    with pytest.raises(SpecError, match="max_enqueued_tokens"):
        _pack([(1, 11)], ShardLimits(10, 10, 10))
    with pytest.raises(SpecError, match="bytes"):
        _pack([(11, 1)], ShardLimits(10, 10, 10))


def test_packer_starts_is_add_entry_by_entry() -> None:
    """A block at a time, `starts` opens batches where `add` would, carrying the open batch
    from one block to the next."""
    entries = [(3, 5), (4, 1), (1, 1), (2, 6), (9, 2), (1, 1), (1, 1), (6, 6), (1, 9)]
    limits = ShardLimits(3, 10, 12)
    one_by_one = Packer(limits)
    expected = [i for i, (b, t) in enumerate(entries) if one_by_one.add(b, t)]
    for cut in range(len(entries) + 1):
        packer = Packer(limits)
        got = []
        for offset, part in ((0, entries[:cut]), (cut, entries[cut:])):
            sizes, tokens = [b for b, _ in part], [t for _, t in part]
            got += [offset + i for i in packer.starts(sizes, tokens)]
        assert got == expected, cut
    assert expected == [0, 3, 4, 6, 8]  # requests at 3, bytes at 4 and 6, tokens at 8


def test_packer_starts_refuses_an_entry_over_a_limit() -> None:
    with pytest.raises(SpecError, match="max_enqueued_tokens"):
        Packer(ShardLimits(10, 10, 10)).starts([1, 1], [1, 11])
    with pytest.raises(SpecError, match="bytes"):
        Packer(ShardLimits(10, 10, 10)).starts([11], [1])
    assert Packer(ShardLimits(10, 10, 10)).starts([], []) == []


def test_quota_windows() -> None:
    assert quota_windows(0, 10) == 0
    assert quota_windows(10, 10) == 1
    assert quota_windows(11, 10) == 2
    assert quota_windows(10**20 + 1, 10**10) == 10**10 + 1


def test_limits_for_spec(tmp_path: Path) -> None:
    text = (
        'name = "a"\nmodel = "gemini-3-pro-image"\n[input]\npath = "x.csv"\nid_column = "id"\n'
        'prompt_column = "p"\n[output]\nuri = "out"\n'
    )
    spec = parse_spec(text, tmp_path / "a.toml", load_catalog())
    assert limits_for(spec) == ShardLimits(100_000, DEFAULT_MAX_BYTES, 2_000_000)
    text += "[limits]\nmax_requests_per_batch = 7\nmax_enqueued_tokens = 500\n"
    spec = parse_spec(text, tmp_path / "a.toml", load_catalog())
    assert limits_for(spec) == ShardLimits(7, DEFAULT_MAX_BYTES, 500)
