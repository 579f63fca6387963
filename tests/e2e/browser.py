"""Headless Chromium for the page tests (Debian chromium + chromium-driver, PyPI selenium;
installed by .ci/run): without them a developer's run skips, CI fails."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest


def browser_tools() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or why they are missing."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "PyPI selenium is not installed"
    if browser is None or driver is None:
        return "Debian chromium / chromium-driver are not installed"
    return browser, driver


def chrome(profile: str) -> Any:
    """Headless Chromium with the flags CI needs and a fresh profile."""
    tools = browser_tools()
    if isinstance(tools, str):
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {tools}: install chromium chromium-driver, pip selenium")
        pytest.skip(f"{tools} (CI would fail here)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = tools
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1500",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def artifacts(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("RATBOND_ARTIFACT_DIR") or tmp_path / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
