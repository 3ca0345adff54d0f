"""The contact sheet: `report RUN --format html --out FILE` is one parseable, paged HTML
page that embeds every succeeded image and lists the failed items with their reasons."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline.emulator import Emulator, FaultPlan, LineFault
from pipeline.shell import contact_sheet
from pipeline.shell.reporting import write_report
from tests.features.helpers import make_context, report_json, run_to_end, submit, write_job


class _Sheet(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, list[dict[str, str | None]]] = {}
        self.failed: dict[str, list[str]] = {}
        self.pages: list[str] = []
        self._figure: str | None = None
        self._failed: str | None = None
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.stack.append(tag)
        if tag == "figure":
            self._figure = a["data-key"]
            self.figures[str(a["data-key"])] = []
        elif tag == "img" and self._figure is not None:
            self.figures[self._figure].append(a)
        elif tag == "tr" and a.get("class") == "failed-item":
            self._failed = a["data-key"]
            self.failed[str(a["data-key"])] = []
        elif tag == "section" and a.get("class") == "page":
            self.pages.append(str(a["id"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "tr":
            self._failed = None

    def handle_data(self, data: str) -> None:
        if self._failed is not None and data.strip():
            self.failed[self._failed].append(data.strip())


def _parse(path: Path) -> _Sheet:
    sheet = _Sheet()
    sheet.feed(path.read_text(encoding="utf-8"))
    sheet.close()
    return sheet


def test_contact_sheet_embeds_images_and_lists_failures(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every succeeded image is a lazy data: thumbnail; failed items show their reasons."""
    monkeypatch.setattr(contact_sheet, "PAGE_SIZE", 2)
    emu.faults = FaultPlan(
        line_faults=[
            LineFault(kind="error", code=3, message="bad prompt", keys=["k-bad"]),
            LineFault(kind="finish", reason="IMAGE_SAFETY", keys=["k-unsafe"]),
        ]
    )
    rows = [{"key": f"k-{i}", "prompt": f"a <b>bold</b> shape {i}"} for i in range(5)]
    rows += [{"key": "k-bad", "prompt": "x"}, {"key": "k-unsafe", "prompt": "y"}]
    ctx = make_context(tmp_path, emu)
    run_id = submit(ctx, write_job(tmp_path, "sheet", rows, per_batch=3))
    run_to_end(ctx, emu, run_id)
    out = tmp_path / "sheet.html"
    write_report(ctx, run_id, "html", out)
    sheet = _parse(out)
    report = report_json(ctx, run_id)
    succeeded = {r["key"] for r in report["items"] if r["status"] == "succeeded"}
    assert succeeded == {f"k-{i}" for i in range(5)}
    assert set(sheet.figures) == succeeded
    for imgs in sheet.figures.values():
        assert len(imgs) == 1
        assert str(imgs[0]["src"]).startswith("data:image/webp;base64,")
        assert imgs[0]["loading"] == "lazy"
    assert sheet.pages == ["page-1", "page-2", "page-3"]
    assert set(sheet.failed) == {"k-bad", "k-unsafe"}
    assert any("bad prompt" in cell for cell in sheet.failed["k-bad"])
    assert any("IMAGE_SAFETY" in cell for cell in sheet.failed["k-unsafe"])
    text = out.read_text(encoding="utf-8")
    assert "a &lt;b&gt;bold&lt;/b&gt; shape 0" in text and "<b>bold</b>" not in text
    assert f"${report['summary']['cost_usd']:.4f}" in text


def test_contact_sheet_survives_a_missing_image(tmp_path: Path, emu: Emulator) -> None:
    """An image deleted from the output shows as missing instead of failing the page."""
    ctx = make_context(tmp_path, emu)
    rows: list[dict[str, Any]] = [{"key": "a", "prompt": "one"}, {"key": "b", "prompt": "two"}]
    run_id = submit(ctx, write_job(tmp_path, "gone", rows))
    run_to_end(ctx, emu, run_id)
    Path(next(r for r in report_json(ctx, run_id)["items"] if r["key"] == "a")["uri"]).unlink()
    out = tmp_path / "gone.html"
    write_report(ctx, run_id, "html", out)
    sheet = _parse(out)
    assert sheet.figures["a"] == [] and len(sheet.figures["b"]) == 1
    assert "image missing" in out.read_text(encoding="utf-8")
