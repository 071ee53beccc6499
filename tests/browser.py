"""Headless Chromium for the page tests (Debian's `chromium` and `chromium-driver`, driven by Selenium).

Without a browser the tests skip and say what to install; with ``FACTORY_BROWSER_TESTS=required`` (CI sets
it) a missing browser is a failure instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

INSTALL = "apt-get install -y chromium chromium-driver, and pip install selenium (the dev extra)"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        return "no chromium binary on PATH"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH"
    return None


@contextmanager
def chromium(width: int = 1300, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver that keeps the browser console log."""
    why = _missing()
    if why:
        message = f"headless Chromium needed: {why} ({INSTALL})"
        if os.environ.get("FACTORY_BROWSER_TESTS") == "required":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(
        shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    )
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--no-first-run"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(str(shutil.which("chromedriver"))))
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def full_page_screenshot(driver: Any, path: Any, width: int = 1300, max_height: int = 6000) -> None:
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(height, 600), max_height))
    driver.save_screenshot(str(path))
