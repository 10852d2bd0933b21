"""Headless Chromium for the tests that look at a page: Debian's chromium and chromedriver through Selenium.

Nothing is downloaded: the browser and the driver are the system's (``make chromium`` installs them), and
Selenium is given both paths, so Selenium Manager never runs. The browser starts with no network
features (no QUIC, background networking, component updates or sync) and a fresh profile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_binary() -> str | None:
    """Debian's chromium (or another Chromium on PATH), None when there is none."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@contextmanager
def headless_chromium(profile: Path, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A Selenium Chrome driver whose page viewport is ``width`` x ``height`` CSS px at scale 1; skips the
    test when chromium, chromedriver or selenium is missing.

    Args:
        profile: a fresh folder for the browser's ``--user-data-dir``.
    """
    browser, driver_path = chromium_binary(), shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("chromium or chromedriver is not installed (make chromium installs Debian's)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test requirement (make venv)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        # the window's outer size includes the browser's frame; the emulated metrics are the page's own
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()
