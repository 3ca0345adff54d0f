"""The contact sheet: `report RUN --format html --out FILE`, one self-contained HTML page of a
run. Each succeeded image is a small WebP thumbnail (at most 256 px, embedded as a data: URI,
`loading="lazy"`) with its key, prompt, size, tokens and cost, and a link to the full image;
then the failed and cancelled items with their reasons, and the run's totals at the top.

Usable for 10,000 images: items are in pages of 200 (a few lines of JavaScript show one page
at a time; without it every page shows, each with an anchor). The page is streamed: rows come
from the ledger in chunks, thumbnails are made in a small thread pool with a bounded window,
and each is written and dropped, so memory does not grow with the number of images. Images
in gs:// are read through the store. Written to a temporary file and renamed.
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from PIL import Image

from pipeline.adapters.ledger import repo
from pipeline.adapters.log import get_logger
from pipeline.core import report
from pipeline.core.errors import StorageError
from pipeline.shell.context import Context

log = get_logger()
PAGE_SIZE = 200
THUMB_PX = 256
THUMB_QUALITY = 60
WORKERS = 4

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}table.totals td{padding:.1em 1em .1em 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{width:260px;margin:0;border:1px solid #ddd;border-radius:6px;padding:6px}
figure img{max-width:256px;max-height:256px;display:block;margin:auto;background:#f4f4f4}
figcaption{font-size:12px;word-wrap:break-word}.key{font-weight:600}
.prompt{color:#555;max-height:5.6em;overflow:auto}.missing{color:#a00}
nav a{margin-right:.4em}table.failed td,table.failed th{border-bottom:1px solid #eee;
padding:.2em .6em;text-align:left;vertical-align:top}
"""
_JS = """
(function(){var pages=document.querySelectorAll('section.page');
function show(id){pages.forEach(function(p){p.hidden=(p.id!==id);});}
document.querySelectorAll('nav a.pg').forEach(function(a){a.addEventListener('click',function(){
show(a.getAttribute('href').slice(1));});});
if(pages.length>1){var h=location.hash.slice(1);
show(document.getElementById(h)&&h.indexOf('page-')===0?h:pages[0].id);}})();
"""


def write_contact_sheet(ctx: Context, run_ref: str, out: Path) -> None:
    """Write the run's contact sheet to `out` (atomically). Side effects: reads images."""
    run, saved = ctx.ledger.run_and_savings(run_ref)
    summary = report.Summary(rejected=run.rejected_count, saved_by_cache_nanos=saved)
    for _ in report.rows_and_summary(_entries(ctx, run.id), summary):
        pass  # the totals go on top, so one cheap pass without images first
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            _write(ctx, run, summary, stream)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("contact_sheet_written", run=run.id, path=str(out), images=summary.succeeded)


def _entries(ctx: Context, run_id: str) -> Iterator[dict[str, Any]]:
    yield from ctx.ledger.report_rows(run_id)


def _write(ctx: Context, run: repo.RunRow, summary: report.Summary, out: IO[str]) -> None:
    e = html.escape
    s = summary.asdict()
    out.write(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(run.id)}: contact sheet</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{e(run.job)} <small>{e(run.id)}</small></h1>\n"
        f"<p>model {e(run.model)} &middot; output {e(run.output_uri)} &middot; "
        f"state {e(run.state)}</p>\n"
    )
    _totals(out, s)
    pages = max(1, -(-s["succeeded"] // PAGE_SIZE))
    out.write("<h2>Images</h2>\n<nav>pages ")
    for p in range(1, pages + 1):
        out.write(f'<a class="pg" href="#page-{p}">{p}</a>')
    out.write(' &middot; <a href="#failed">failed items</a></nav>\n')
    _images(ctx, run, out)
    _failed(ctx, run, out)
    out.write(f"<script>{_JS}</script>\n</body></html>\n")


def _totals(out: IO[str], s: dict[str, Any]) -> None:
    rows = [
        ("items", s["items"]),
        ("succeeded", s["succeeded"]),
        ("failed", s["failed"]),
        ("pending", s["pending"]),
        ("cancelled", s["cancelled"]),
        ("rejected rows", s["rejected"]),
        ("served from the prompt cache", s["cached"]),
        ("cost (batch price)", f"${s['cost_usd']:.4f}"),
        ("cost at standard price", f"${s['standard_cost_usd']:.4f}"),
        ("saved by the prompt cache", f"${s['saved_by_cache_usd']:.4f}"),
        ("tokens", ", ".join(f"{k} {v:,}" for k, v in s["tokens"].items())),
    ]
    out.write('<table class="totals" id="totals">')
    for name, value in rows:
        out.write(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(value))}</td></tr>")
    out.write("</table>\n")


def _succeeded(ctx: Context, run_id: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    for entry in _entries(ctx, run_id):
        item = entry["item"]
        if item.state == "succeeded" and item.uri:
            yield item, report.item_row(item, entry)


def _images(ctx: Context, run: repo.RunRow, out: IO[str]) -> None:
    store = ctx.store(run.output_uri)
    n = 0
    window: deque[tuple[Any, dict[str, Any], Future[str | None]]] = deque()

    def flush_one() -> None:
        nonlocal n
        item, row, fut = window.popleft()
        if n % PAGE_SIZE == 0:
            if n:
                out.write("</div></section>\n")
            page = n // PAGE_SIZE + 1
            out.write(f'<section class="page" id="page-{page}"><h3>page {page}</h3>')
            out.write('<div class="grid">\n')
        out.write(_figure(item, row, fut.result()))
        n += 1

    with ThreadPoolExecutor(WORKERS) as pool:
        for item, row in _succeeded(ctx, run.id):
            window.append((item, row, pool.submit(_thumbnail, store, item.uri)))
            if len(window) >= WORKERS * 4:
                flush_one()
        while window:
            flush_one()
    if n:
        out.write("</div></section>\n")
    else:
        out.write('<section class="page" id="page-1"><p>No images yet.</p></section>\n')


def _thumbnail(store: Any, uri: str) -> str | None:
    """A data: URI of a WebP thumbnail of the image at `uri`, or None when unreadable."""
    try:
        data = store.read_bytes(uri)
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (THUMB_PX, THUMB_PX))
            img.thumbnail((THUMB_PX, THUMB_PX))
            small = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            buf = io.BytesIO()
            small.save(buf, "WEBP", quality=THUMB_QUALITY, method=4)
    except (StorageError, OSError, ValueError) as exc:
        log.warning("contact_sheet_thumbnail_failed", uri=uri, error=str(exc)[:200])
        return None
    return "data:image/webp;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _href(uri: str) -> str:
    """A link to the full image: file:// for local output, the console URL for gs://."""
    if uri.startswith("gs://"):
        return "https://storage.cloud.google.com/" + uri[len("gs://") :]
    return Path(uri).as_uri() if os.path.isabs(uri) else uri


def _figure(item: Any, row: dict[str, Any], thumb: str | None) -> str:
    e = html.escape
    key = e(item.key, quote=True)
    if thumb is None:
        pic = '<p class="missing">image missing</p>'
    else:
        pic = f'<img src="{thumb}" alt="{key}" loading="lazy">'
    tokens = (
        f"in {row['input_tokens']:,} / image {row['output_image_tokens']:,} / "
        f"text {row['output_text_tokens']:,} / thinking {row['thinking_tokens']:,}"
    )
    cached = " (cached)" if row["cached"] else ""
    return (
        f'<figure data-key="{key}"><a href="{e(_href(item.uri), quote=True)}">{pic}</a>'
        f'<figcaption><div class="key">{e(item.key)}</div>'
        f'<div class="prompt">{e(item.prompt)}</div>'
        f"<div>{e(item.aspect_ratio)} {e(item.image_size or '-')} &middot; {e(row['model'])}</div>"
        f"<div>tokens {tokens}</div>"
        f"<div>${row['cost_usd']:.4f}{cached} &middot; {row['attempts']} attempt(s)</div>"
        "</figcaption></figure>\n"
    )


def _failed(ctx: Context, run: repo.RunRow, out: IO[str]) -> None:
    e = html.escape
    out.write('<section id="failed"><h2>Failed and cancelled items</h2>\n')
    n = 0
    for row in ctx.ledger.failed_items(run.id):
        if not n:
            out.write(
                '<table class="failed"><tr><th>key</th><th>reason</th><th>for good</th>'
                "<th>prompt</th></tr>\n"
            )
        out.write(
            f'<tr class="failed-item" data-key="{e(row.key, quote=True)}">'
            f"<td>{e(row.key)}</td><td>{e(row.error or '')}</td>"
            f"<td>{'yes' if row.final else 'no'}</td><td>{e(row.prompt)}</td></tr>\n"
        )
        n += 1
    out.write("</table>\n" if n else "<p>None.</p>\n")
    out.write("</section>\n")
