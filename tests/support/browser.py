"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for page tests.

Started with the flags this machine needs (no sandbox as root, no GPU, no background networking:
the network is closed and Chromium's own calls home would be refused), a fresh profile per browser,
and chromedriver by path, so selenium never tries to download a driver.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import IN_CI

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def require_chromium() -> None:
    """Skip off CI when Chromium is not installed; fail in CI, where .ci/run installs it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver"
    if IN_CI:
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


@contextmanager
def chromium(profile_dir: Path) -> Iterator[Any]:
    """A selenium Chrome driver on Debian's chromium; quit (and its processes reaped) on exit."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def rendered_stats(driver: Any) -> list[tuple[str, str]]:
    """Every ``data-stat`` element on the page as (key, text), in document order."""
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('[data-stat]')]"
        ".map(el => [el.dataset.stat, el.textContent]);"
    )
    return [(k, v) for k, v in pairs]


def as_rendered(value: Any) -> str:
    """How the page's ``String(value)`` shows a JSON scalar."""
    return value if isinstance(value, str) else json.dumps(value)


def screenshot(driver: Any, path: Path) -> Path:
    """Save a PNG of the whole page (beyond the window's viewport), via the DevTools protocol."""
    width, height = driver.execute_script(
        "const d = document.documentElement; return [d.scrollWidth, d.scrollHeight];"
    )
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
