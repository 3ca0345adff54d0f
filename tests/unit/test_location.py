"""An output location shared by runs: per-run table names and the streamed listing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.shell.location import MANIFEST, REJECTS, Listing, per_run


class _Names:
    """A store stand-in that only lists: `count` image names plus a few others."""

    base_uri = "mem://x"

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    def iter_names(self) -> Iterator[str]:
        yield "manifest.parquet"
        yield "manifest-alice-20260101-0123abcd.parquet"
        yield "rejects-alice-20260101-0123abcd.csv"
        yield "notes.txt"
        for i in range(self.count):
            self.pulled += 1
            yield f"img-{i}.png"
        yield "img-7.jpg"  # a second image with a stem already seen


def test_per_run_table_names() -> None:
    assert per_run(MANIFEST, "bob-20260101-89abcdef") == "manifest-bob-20260101-89abcdef.parquet"
    assert per_run(REJECTS, "bob-20260101-89abcdef") == "rejects-bob-20260101-89abcdef.csv"


def test_listing_spills_image_names_and_finds_stems() -> None:
    """Image names go to a spill file (memory does not grow with them); stems are found in
    batches; per-run tables are remembered; the spill file goes on close."""
    store = _Names(25_000)
    with Listing.of(store) as listing:  # type: ignore[arg-type]
        assert listing.images == 25_001
        assert listing.tables == {
            "manifest-alice-20260101-0123abcd.parquet",
            "rejects-alice-20260101-0123abcd.csv",
        }
        stems = [f"img-{i}" for i in range(0, 30_000, 7)]
        found = listing.find(stems)
        assert found == {f"img-{i}": f"img-{i}.png" for i in range(0, 25_000, 7)}
        spill = listing._folder
        assert spill is not None and (spill / "names.db").exists()
    assert not Path(spill).exists()


def test_an_empty_location_spills_nothing() -> None:
    with Listing.of(_Names(0)) as listing:  # type: ignore[arg-type]
        assert listing.images == 1 and listing.find(["img-7"]) == {"img-7": "img-7.jpg"}
    with Listing.of(_Empty()) as listing:  # type: ignore[arg-type]
        assert listing.images == 0 and listing._folder is None and listing.find(["x"]) == {}


class _Empty:
    def iter_names(self) -> Iterator[str]:
        return iter(())
