"""The contact sheet (`report --format html`) opened in headless Chromium, as a person would
after a night's run of 450 images: every thumbnail decodes, paging shows each page, failed
items are listed, and a prompt holding HTML or a script is shown as text. The first page's
screenshot is kept in the test's tmp dir and in test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.emulator import FaultPlan, LineFault
from tests.browser import chromium, save_artifact

IMAGES = 450
PAGE = 200  # pipeline.shell.contact_sheet.PAGE_SIZE
HOSTILE = "<script>window.__pwned = 1</script><b>bold</b> & <img src=x onerror=alert(1)>"
FAILED = {"fail-bad": "bad request", "fail-unsafe": "IMAGE_SAFETY"}  # key -> its reason

# Scroll down the visible page a screen at a time (lazy images load near the viewport), then
# wait for every image to load or fail; answer [alt, naturalWidth, decoded] per image, where
# decoded says img.decode() resolved (a truncated image can have a width from its header).
_LOAD_VISIBLE_IMAGES = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.querySelectorAll('section.page:not([hidden]) figure img'));
const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
(async () => {
  for (let y = 0; y < document.body.scrollHeight; y += window.innerHeight / 2) {
    window.scrollTo(0, y); await frame();
  }
  await Promise.all(imgs.map(img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r); })));
  const decoded = await Promise.all(imgs.map(img => img.decode().then(() => true, () => false)));
  window.scrollTo(0, 0);
  done(imgs.map((img, i) => [img.alt, img.naturalWidth, decoded[i]]));
})();
"""


def _rows() -> list[dict[str, str]]:
    rows = [
        {"sku": f"img-{i:03d}", "title": f"object {i}", "colour": "teal"} for i in range(IMAGES)
    ]
    rows[7]["title"] = HOSTILE
    rows += [{"sku": key, "title": "doomed", "colour": "grey"} for key in FAILED]
    return rows


def _visible_pages(driver: Any) -> list[str]:
    return [
        s.get_attribute("id")
        for s in driver.find_elements("css selector", "section.page")
        if s.is_displayed()
    ]


def _wait(condition: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("the page did not get there in time")


def test_contact_sheet_in_headless_chromium(make_e2e: Any, tmp_path: Path) -> None:
    """A 450-image run's sheet in Chromium: each page shows alone with its images, every
    thumbnail decodes (naturalWidth > 0), the failed items are listed with their reasons,
    and a prompt holding HTML and a script is text (the script never runs)."""
    plan = FaultPlan(
        line_faults=[
            LineFault(kind="error", code=3, message="bad request", keys=["fail-bad"]),
            LineFault(kind="finish", reason="IMAGE_SAFETY", keys=["fail-unsafe"]),
        ]
    )
    e2e = make_e2e(faults=plan, image_scale=0.1)  # 1K at a tenth: ~100 px images, fast
    e2e.write_csv(_rows())
    spec = e2e.write_spec(max_requests_per_batch=160)
    spec.write_text(spec.read_text().replace("budget_usd = 5.0", "budget_usd = 100.0"))
    run = e2e.run("--json")
    assert run.code == 3, run.stderr
    report = run.json()
    assert report["summary"]["succeeded"] == IMAGES
    sheet = tmp_path / "sheet.html"
    made = e2e.invoke("report", report["run"], "--format", "html", "--out", str(sheet))
    assert made.code == 0, made.stderr

    with chromium() as driver:
        driver.set_script_timeout(120)
        driver.get(sheet.as_uri())
        pages = [f"page-{n}" for n in range(1, -(-IMAGES // PAGE) + 1)]
        assert _visible_pages(driver) == ["page-1"]
        shot = tmp_path / "contact-sheet-page-1.png"
        assert driver.save_screenshot(str(shot))
        save_artifact(shot, shot.name)

        seen: list[str] = []
        for number, page in enumerate(pages, start=1):
            driver.find_element("css selector", f'nav a.pg[href="#{page}"]').click()
            _wait(lambda page=page: _visible_pages(driver) == [page])
            loaded = driver.execute_async_script(_LOAD_VISIBLE_IMAGES)
            expected = min(PAGE, IMAGES - (number - 1) * PAGE)
            assert len(loaded) == expected, page
            broken = [alt for alt, width, decoded in loaded if not (width > 0 and decoded)]
            assert not broken, f"{page}: thumbnails that did not decode: {broken[:5]}"
            seen += [alt for alt, _, _ in loaded]
        assert sorted(seen) == sorted(f"img-{i:03d}" for i in range(IMAGES))

        driver.find_element("css selector", 'nav a[href="#failed"]').click()
        rows = {
            row.get_attribute("data-key"): row.text
            for row in driver.find_elements("css selector", "#failed tr.failed-item")
        }
        assert set(rows) == set(FAILED)
        for key, reason in FAILED.items():
            assert reason in rows[key], rows[key]
        assert driver.find_element("id", "failed").is_displayed()

        driver.find_element("css selector", 'nav a.pg[href="#page-1"]').click()
        prompt = driver.find_element("css selector", 'figure[data-key="img-007"] .prompt')
        assert HOSTILE in prompt.text
        assert prompt.find_elements("css selector", "script, b, img") == []
        assert driver.execute_script("return window.__pwned === undefined")
        logs = [e["message"] for e in driver.get_log("browser")]
        assert not [m for m in logs if "alert" in m], logs
