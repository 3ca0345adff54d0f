"""Headless Chromium for tests that look at a page as a person would.

Owns finding the system browser (Debian's `chromium` and `chromium-driver`; nothing is
downloaded) and driving it through selenium. Without a browser the test is skipped, unless
CI=true: then it fails, so CI never passes by skipping. `.ci/run` installs the packages.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
"""Screenshots and other things a person may want to look at after a run (git-ignored)."""

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return next((p for p in extra if os.path.exists(p)), None)


def _missing(reason: str) -> NoReturn:
    message = f"{reason}; install it with `apt-get install -y chromium chromium-driver`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A selenium WebDriver on headless system Chromium; skipped (failed with CI=true) when
    the browser, its driver or selenium is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[dev]')")
    browser = _which(_BROWSERS, ("/usr/lib/chromium/chromium",))
    driver_path = _which(_DRIVERS, ("/usr/lib/chromium/chromedriver",))
    if browser is None or driver_path is None:
        _missing("no chromium or chromedriver on this machine")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--allow-file-access-from-files",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def save_artifact(source: Path, name: str) -> Path:
    """Copy a file a test made (a screenshot) to test-artifacts/NAME; return the copy."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    shutil.copyfile(source, target)
    return target
