"""The spool's results files: a finished batch's results on local disk, read while they are
still downloading.

Owns the file names (`<display name>.results.jsonl` when complete, `.part` while a
download writes it; request files are `shardfile`'s), the download thread, and the reader
that follows a growing file. A complete spool from an earlier try is reused; a crash before
the rename downloads again (recorded attempts are skipped on the replay either way).

Why a thread and big blocks: the download only moves bytes from the socket to the file
(the backend reads megabytes per call, and file writes release the interpreter), so it is
never starved by the parsers that compete for the interpreter; the reader takes the file in
blocks of megabytes and hands out each line as a `Span` of its block (one call per block,
not one per 8 KiB, and no copy of a line: copying megabytes holds the interpreter). A line
cut by a block's end is joined, one copy. A block lives while a span of it is in use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from pipeline.adapters.drill import crashpoint
from pipeline.adapters.log import get_logger
from pipeline.adapters.private import make_private_dir, open_private

log = get_logger()
RESULTS_SUFFIX = ".results.jsonl"
BLOCK = 8 << 20
"""Bytes the reader asks for at a time: a few lines of 2K images per call."""
POLL_S = 0.005
"""How long the reader waits for the download when it has caught up with it."""


class Span(NamedTuple):
    """One line of the file: `block[start:end]`, newline included, not copied out."""

    block: bytes
    start: int
    end: int

    def __bytes__(self) -> bytes:
        return self.block[self.start : self.end]


def results_path(spool_dir: Path, display_name: str) -> Path:
    return spool_dir / f"{display_name}{RESULTS_SUFFIX}"


def results_files(spool_dir: Path) -> dict[str, Path]:
    """Complete results spools by batch display name."""
    return {p.name.removesuffix(RESULTS_SUFFIX): p for p in spool_dir.glob(f"*{RESULTS_SUFFIX}")}


Download = Callable[[Path], int]
"""Writes the whole results file to the path given; returns its size in bytes."""


class ResultsSpool:
    """One batch's results file in the spool; `download(path) -> bytes` fetches it."""

    def __init__(
        self,
        spool_dir: Path,
        display_name: str,
        download: Download,
        log_fields: dict[str, Any] | None = None,
    ) -> None:
        make_private_dir(spool_dir)
        self._log_fields = log_fields or {}
        self.path = results_path(spool_dir, display_name)
        self.part = self.path.with_suffix(".part")
        self.size = 0
        self._download = download
        self._done = threading.Event()
        self._error: BaseException | None = None

    def lines(self) -> Generator[Span, None, None]:
        """Every line of the file (the last one even without its newline), while the
        download (if the file is not complete yet) runs in its own thread. Closing the
        generator early still lets the download finish and keeps the file."""
        if self.path.exists():
            with self.path.open("rb", buffering=0) as fh:
                yield from _split(fh, None)
            return
        open_private(self.part).close()  # empty and 0600; the download keeps the mode
        fetch = threading.Thread(target=self._fetch, name="harvest-download", daemon=True)
        with self.part.open("rb", buffering=0) as fh:
            fetch.start()
            try:
                yield from _split(fh, self)
            finally:
                # Also when the reader stopped early (its storage failed): the download
                # goes on to its end and is kept, so the paid results wait in the spool.
                fetch.join()
                if self._error is None:
                    self._keep()
        if self._error is not None:
            raise self._error

    def fetch(self) -> bool:
        """The whole file into the spool, read by nothing, unless it is there. True when
        this call downloaded it."""
        if self.path.exists():
            return False
        self.size = self._download(self.part)
        self._keep()
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _keep(self) -> None:
        self.part.replace(self.path)
        crashpoint("harvest.downloaded")
        log.info("batch_downloaded", bytes=self.size, **self._log_fields)

    def _fetch(self) -> None:
        try:
            self.size = self._download(self.part)
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def _ended(self, wait: bool) -> tuple[bool, bool]:
        """(done, failed) of the download; with `wait`, after waiting a moment for it."""
        if wait and not self._done.is_set():
            self._done.wait(POLL_S)
        return self._done.is_set(), self._error is not None


def _split(fh: BinaryIO, growing: ResultsSpool | None) -> Iterator[Span]:
    """Whole lines of `fh` read in blocks; with `growing`, of a file another thread is
    appending to, until its download is done (a failed one yields no partial last line)."""
    head = b""
    while True:
        # Asked before the read: done then and nothing read means the end of the file.
        done, failed = growing._ended(False) if growing is not None else (True, False)
        block = fh.read(BLOCK)
        if not block:
            if not done:
                assert growing is not None
                growing._ended(True)
                continue
            if head and not failed:
                yield Span(head, 0, len(head))
            return
        start = 0
        if head:
            cut = block.find(b"\n")
            if cut < 0:
                head += block  # a line longer than a block: rare, grows once per block
                continue
            line = head + block[: cut + 1]
            yield Span(line, 0, len(line))
            head, start = b"", cut + 1
        end = block.rfind(b"\n") + 1
        if end > start:
            yield from _whole_lines(block, start, end)
        head = block[max(end, start) :]


def _whole_lines(block: bytes, start: int, end: int) -> Iterator[Span]:
    while start < end:
        cut = block.index(b"\n", start) + 1
        yield Span(block, start, cut)
        start = cut
