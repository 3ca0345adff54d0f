"""An output location as several runs share it (CONTRACT section 6: runs that share an output
location never destroy each other's files).

Owns three things:
- which runs of the ledger write to one location: runs whose output uri opens the same store
  (`base_uri`: an absolute folder, or gs://bucket/prefix), oldest first;
- the names of a run's tables there: a location with one run keeps `manifest.parquet` and
  `rejects.csv` as they always were; once several runs share it, each run's own rows go to
  `manifest-<run>.parquet` and `rejects-<run>.csv`, and the plain names hold every run's rows
  with a `run` column (`reporting.write_tables` writes them);
- `Listing`: one streamed listing of what is at the location, kept for two questions: which
  image stems are there (the names `taken` checks items against), and which per-run tables
  exist. Image names are spilled into a throwaway SQLite file a page at a time, so memory
  stays flat however many objects the location holds; an empty location costs nothing more
  than its (empty) listing.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

from pipeline.adapters.storage import ObjectStore
from pipeline.core import naming
from pipeline.core.errors import PipelineError
from pipeline.shell.context import Context

MANIFEST = "manifest.parquet"
REJECTS = "rejects.csv"
_PAGE = 1000
"""Names spilled, and stems looked up, per statement."""


def per_run(table: str, run_id: str) -> str:
    """A run's own copy of a table at a shared location: manifest-<run>.parquet,
    rejects-<run>.csv (run ids are [a-z0-9-], so the name is always a safe object name)."""
    stem, dot, ext = table.rpartition(".")
    return f"{stem}-{run_id}{dot}{ext}"


def location_key(ctx: Context, uri: str) -> str:
    """The location `uri` names, as its store spells it (absolute path, gs://bucket/prefix)."""
    try:
        return ctx.store(uri).base_uri
    except PipelineError:  # a uri no store opens any more: compare it as written
        return uri


def runs_sharing(ctx: Context, output_uri: str) -> list[str]:
    """Ids of the ledger's runs (any state) whose output is this location, oldest first."""
    return runs_among(ctx, ctx.ledger.run_outputs(), output_uri)


def runs_among(ctx: Context, outputs: Iterable[tuple[str, str]], output_uri: str) -> list[str]:
    """Ids of the runs among `outputs` ((run id, output URI), oldest first) whose output
    is this location."""
    key = location_key(ctx, output_uri)
    return [run_id for run_id, uri in outputs if location_key(ctx, uri) == key]


class Listing:
    """What one listing found at a location: image names by stem, and per-run table names.

    Use as a context manager (the spill file is removed on exit)."""

    def __init__(self) -> None:
        self.images = 0
        """Image names found (any run's or anyone's)."""
        self.tables: set[str] = set()
        """Per-run tables found (manifest-<run>.parquet, rejects-<run>.csv)."""
        self._folder: Path | None = None
        self._db: sqlite3.Connection | None = None

    @classmethod
    def of(cls, store: ObjectStore) -> Listing:
        """List `store` once, streamed; StorageError when it cannot be listed."""
        listing = cls()
        try:
            names = store.iter_names()
            while page := list(islice(names, _PAGE)):
                listing._add(page)
        except BaseException:
            listing.close()
            raise
        return listing

    def find(self, stems: Sequence[str]) -> dict[str, str]:
        """stem -> an image name found with that stem, for those of `stems` that have one."""
        if self._db is None or not stems:
            return {}
        found: dict[str, str] = {}
        unique = sorted(set(stems))
        for start in range(0, len(unique), _PAGE):
            chunk = unique[start : start + _PAGE]
            marks = ", ".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT stem, name FROM names WHERE stem IN ({marks})", chunk)
            found.update(rows)
        return found

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> Listing:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _add(self, names: Iterable[str]) -> None:
        images = []
        for name in names:
            stem = naming.image_stem(name)
            if stem is not None:
                images.append((stem, name))
            elif name.startswith(("manifest-", "rejects-")):
                self.tables.add(name)
        if images:
            # First name per stem wins: one is enough to say the name is taken.
            db = self._spill()
            db.executemany("INSERT OR IGNORE INTO names VALUES (?, ?)", images)
            db.commit()
            self.images += len(images)

    def _spill(self) -> sqlite3.Connection:
        if self._db is None:
            self._folder = Path(tempfile.mkdtemp(prefix="nanobatch-names-"))
            self._db = sqlite3.connect(self._folder / "names.db")
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE names (stem TEXT PRIMARY KEY, name TEXT NOT NULL)")
        return self._db
