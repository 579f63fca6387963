"""The fleet page in a real browser: headless Chromium driven by selenium.

    selenium ── chromedriver ── chromium (headless, fresh profile)
                                    │ GET /?token=T, then fleet.json every 3 s
                                    ▼
    FleetServer on 127.0.0.1:<free port>, on its own thread (as in ``ratbond fleet``)
        └── FleetView fed the way paho's thread feeds it

Asserts one row per member with its cells, the offline and path-down rows marked, a change
in the view reaching the page by polling, the phone layout (labelled cards), and no browser
error (a CSP violation or a script error would log one).  Browser set-up: tests/e2e/browser.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.mqtt.fleet import FleetView
from ratbond.mqtt.fleet_http import FleetHttpThread, FleetServer
from tests.e2e.browser import artifacts, wait_for

TOKEN = "fleet-page-token"


def _status(up: int, known: int) -> bytes:
    return json.dumps({"state": "up" if up == known else "degraded",
                       "totals": {"paths_up": up, "paths_known": known,
                                  "rates": {"rx_10s": 2_500_000, "tx_10s": 125_000}}}).encode()


@pytest.fixture
def page() -> Iterator[tuple[str, FleetView]]:
    view = FleetView()
    now = time.time()
    view.update("ratbond/client/site1/status", _status(2, 2), now)
    view.update("ratbond/client/site1/state", b"online", now)
    view.update("ratbond/server/vps/status", _status(1, 2), now)
    view.update("ratbond/server/vps/state", b"online", now)
    view.update("ratbond/router/r1<img src=x>/hello", b'{"settings_version": 2}', now)
    view.update("ratbond/router/r1<img src=x>/state", b"offline", now)
    served = FleetHttpThread(FleetServer(view, token=TOKEN), "127.0.0.1", 0)
    served.start()
    try:
        yield f"http://127.0.0.1:{served.port}/?token={TOKEN}", view
    finally:
        served.stop()


def _rows(driver: Any) -> dict[str, dict[str, Any]]:
    script = """return Array.from(document.querySelectorAll('#fleet tbody tr')).map(r => ({
        key: r.dataset.role + '/' + r.dataset.name, cls: r.className,
        cells: Array.from(r.cells).map(c => c.textContent)}));"""
    return {row["key"]: row for row in driver.execute_script(script)}


@pytest.mark.slow
def test_the_fleet_page_shows_every_member_and_follows_changes(
        page: tuple[str, FleetView], browser: Any, tmp_path: Path) -> None:
    url, view = page
    browser.get(url)
    rows = wait_for(lambda: (r := _rows(browser)) and len(r) == 3 and r, 15, "three rows")
    assert rows["client/site1"]["cells"][:6] == ["client", "site1", "online", "up", "2/2",
                                                 "20.00"]
    assert rows["client/site1"]["cls"] == ""
    assert "attention" in rows["server/vps"]["cls"] and rows["server/vps"]["cells"][4] == "1/2"
    router = rows["router/r1<img src=x>"]
    assert "offline" in router["cls"] and router["cells"][1] == "r1<img src=x>"  # text, not HTML
    assert not browser.find_elements("css selector", "#fleet img")
    counts = browser.find_element("id", "counts").text
    assert counts.startswith("3 members") and "2 online" in counts

    view.update("ratbond/router/r1<img src=x>/state", b"online", time.time())
    wait_for(lambda: "offline" not in _rows(browser)["router/r1<img src=x>"]["cls"], 10,
          "the router's row to follow it online")

    out = artifacts(tmp_path)
    assert browser.save_screenshot(str(out / "fleet-desktop.png"))
    browser.set_window_size(390, 1200)
    head = browser.execute_script(
        "return getComputedStyle(document.querySelector('#fleet thead')).display")
    label = browser.execute_script("return getComputedStyle(document.querySelector("
                                   "'#fleet tbody td'), '::before').content")
    assert head == "none" and label == '"role"'
    assert browser.save_screenshot(str(out / "fleet-phone.png"))
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], errors
    print(f"screenshots in {out}")
