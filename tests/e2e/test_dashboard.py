"""The dashboard in a real browser: headless Chromium driven by selenium.

    selenium ── chromedriver ── chromium (headless, fresh profile)
                                    │ GET /?token=T, then status.json + history.json every 1 s
                                    ▼
    StatusServer on 127.0.0.1:<free port>, in a thread of its own
        └── ScriptedRuntime.snapshot(): three paths whose byte counters grow with time

Asserts every path card is present with its state, the goodput chart's data grows between two
reads a few seconds apart, a path switched to down turns its card to down with its reason, and
the page logs no error (a CSP violation or a script error would).  Screenshots (desktop and
phone width) go to ``$RATBOND_ARTIFACT_DIR`` or the test's tmp dir.  Needs Debian's ``chromium``
and ``chromium-driver`` and PyPI's ``selenium``; skipped without them unless ``CI`` is set.

The last test (root) does the same against a real lab tunnel: the browser runs inside the
client's namespace (:func:`drive`, talking over pipes), the lab blackholes a link under load.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.status import StatusServer
from tests.e2e.browser import artifacts, browser_tools, chrome, wait_for

TOKEN = "dashboard-test-token"
PATHS = (("wan1", 30e6), ("wan2", 20e6), ("wan3", 10e6))  # name, bits/s received


class ScriptedRuntime:
    """Stands in for a client runtime: counters grow with wall time at fixed rates."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.state = {name: "up" for name, _rate in PATHS}
        self.lock = threading.Lock()

    def set_state(self, wan: str, state: str) -> None:
        with self.lock:
            self.state[wan] = state

    def snapshot(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        with self.lock:
            states = dict(self.state)
        paths = []
        for index, (wan, rate) in enumerate(PATHS, start=1):
            up = states[wan] == "up"
            paths.append({
                "path_id": index, "wan": wan, "state": states[wan],
                "down_reason": None if up else "silent", "local": f"192.168.{index}.2",
                "srtt_ms": 20.0 * index + (elapsed % 3), "min_rtt_ms": 20.0 * index,
                "loss": 0.001 * index, "capacity_bps": rate * 1.1,
                "rx_bytes": int(rate / 8 * elapsed), "tx_bytes": int(rate / 80 * elapsed),
                "rx_packets": int(rate / 8 / 1300 * elapsed), "waitsnd": 3, "queue_limit": 64,
                "retransmits": index,
            })
        return {
            "role": "client", "version": "0.1.0", "uptime_s": elapsed, "session": "0000abcd",
            "server": "vps.example.net:12345", "balance": "adaptive",
            "channel": {"mode": "encrypted", "cipher": "chacha20-poly1305", "rekeys": 2},
            "tunnel": {"device": "tun660", "address": "10.10.10.1/30", "mtu": 1391,
                       "default_route": True},
            "counters": {"tun_rx_packets": int(1000 * elapsed)},
            "drops": {"auth_failed": 0, "replayed": 1},
            "reorder": {"held": 0, "late": 3, "duplicates": 0, "timeout_s": 0.02},
            "paths": paths,
        }


def server_snapshot(runtime: ScriptedRuntime) -> dict[str, Any]:
    """The same paths as a server sees them: two client sessions, one path each elsewhere."""
    snap = runtime.snapshot()
    rows = snap["paths"]
    for row, session in zip(rows, ("0000abcd", "0000abcd", "00005555"), strict=True):
        row["session"] = session
        row["remote"] = f"203.0.113.{row['path_id']}:4000{row['path_id']}"
        row["wan"] = None
    snap.update(role="server", listen="0.0.0.0:12345", sessions=[
        {"session": "0000abcd", "client": "203.0.113.1", "age_s": 42.0, "active": True},
        {"session": "00005555", "client": "198.51.100.7", "age_s": 7.0, "active": False}])
    return snap


@pytest.fixture(params=["client"])
def dashboard(request: pytest.FixtureRequest) -> Iterator[tuple[str, ScriptedRuntime]]:
    runtime = ScriptedRuntime()
    role = getattr(request, "param", "client")
    server = StatusServer(runtime.snapshot if role == "client"
                          else lambda: server_snapshot(runtime), token=TOKEN)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10), "status server did not start"
    try:
        yield f"http://127.0.0.1:{server.port}/?token={TOKEN}", runtime
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _cards(driver: Any) -> dict[str, dict[str, str]]:
    script = """return Array.from(document.querySelectorAll('article.card')).map(c => ({
        key: c.dataset.pathKey, state: c.dataset.state, cls: c.className,
        name: c.querySelector('.name').textContent, since: c.querySelector('.since').textContent,
        received: c.querySelector('dd[data-field=received]').textContent}));"""
    return {row["name"]: row for row in driver.execute_script(script)}


def _chart(driver: Any) -> tuple[int, float]:
    canvas = driver.find_element("id", "chart-rx")
    return int(canvas.get_attribute("data-points")), float(canvas.get_attribute("data-last-total"))


@pytest.mark.slow
def test_dashboard_shows_paths_charts_and_a_path_going_down(
        dashboard: tuple[str, ScriptedRuntime], browser: Any, tmp_path: Path) -> None:
    url, runtime = dashboard
    browser.get(url)
    names = [f"{wan} #{i}" for i, (wan, _rate) in enumerate(PATHS, start=1)]
    cards = wait_for(lambda: (c := _cards(browser)) and len(c) == len(PATHS) and c, 15,
                  "three path cards")
    assert sorted(cards) == names
    for card in cards.values():
        assert card["state"] == "up" and "up" in card["cls"].split(), card
    assert browser.find_element("id", "state").text.lower() == "up"

    first = wait_for(lambda: (p := _chart(browser))[0] >= 2 and p, 15, "two chart samples")
    time.sleep(3.0)
    second = _chart(browser)
    assert second[0] >= first[0] + 2, (first, second)  # one sample per second
    expected_mbit = sum(rate for _wan, rate in PATHS) / 1e6
    assert abs(second[1] - expected_mbit) < 0.1 * expected_mbit, second
    received = _cards(browser)["wan1 #1"]["received"]
    assert received.endswith("Mbit/s") and abs(float(received.split()[0]) - 30.0) < 3.0

    out = artifacts(tmp_path)
    runtime.set_state("wan2", "down")
    down = wait_for(lambda: (c := _cards(browser)["wan2 #2"])["state"] == "down" and c, 10,
                 "wan2's card to turn down")
    assert "down" in down["cls"].split() and "silent" in down["since"]
    assert browser.find_element("id", "state").text.lower() == "degraded"
    assert {n: c["state"] for n, c in _cards(browser).items()} == {
        "wan1 #1": "up", "wan2 #2": "down", "wan3 #3": "up"}
    time.sleep(1.5)  # let the charts draw the drop
    assert browser.save_screenshot(str(out / "dashboard-desktop.png"))
    browser.set_window_size(390, 1800)
    time.sleep(1.5)
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width}px"
    assert browser.save_screenshot(str(out / "dashboard-phone.png"))

    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], errors
    print(f"screenshots in {out}")


@pytest.mark.slow
@pytest.mark.parametrize("dashboard", ["server"], indirect=True)
def test_server_dashboard_has_one_block_per_session(
        dashboard: tuple[str, ScriptedRuntime], browser: Any, tmp_path: Path) -> None:
    url, _runtime = dashboard
    browser.get(url)
    script = """return Array.from(document.querySelectorAll('#sessions .session')).map(s => ({
        session: s.dataset.session, title: s.querySelector('h2').textContent,
        cards: Array.from(s.querySelectorAll('article.card')).map(c => c.dataset.pathKey)}));"""
    blocks = wait_for(lambda: (b := browser.execute_script(script)) and len(b) == 2 and
                   all(x["cards"] for x in b) and b, 15, "two session blocks with cards")
    assert [(b["session"], b["cards"]) for b in blocks] == [
        ("0000abcd", ["0000abcd/1", "0000abcd/2"]), ("00005555", ["00005555/3"])]
    assert "active" in blocks[0]["title"] and "client 203.0.113.1" in blocks[0]["title"]
    assert "client 198.51.100.7" in blocks[1]["title"]
    wait_for(lambda: _chart(browser)[0] >= 2, 15, "two chart samples")
    assert browser.save_screenshot(str(artifacts(tmp_path) / "dashboard-server.png"))
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], errors


# ---------------------------------------------------------------------- a real lab tunnel


def drive(url: str, shot: str, profile: str, cut_wan: str) -> None:
    """Runs inside the client's namespace (``python -c``): prints one JSON line when every
    card is up and the chart has data, waits for ``cut`` on stdin, then for ``cut_wan``'s card
    to turn down; prints the result, saves a screenshot."""
    import json
    import sys

    driver = chrome(profile)
    try:
        driver.get(url)
        ready = wait_for(lambda: (c := _cards(driver)) and all(v["state"] == "up" for v in
                                                             c.values()) and
                      _chart(driver)[0] >= 3 and c, 30, "every card up, chart samples")
        print(json.dumps({"cards": ready, "chart": _chart(driver)}), flush=True)
        assert sys.stdin.readline().strip() == "cut"
        start = time.monotonic()
        down = wait_for(lambda: next((c for c in _cards(driver).values()
                                   if c["name"].startswith(cut_wan + " ") and
                                   c["state"] == "down"), None), 15, f"{cut_wan} down")
        took = time.monotonic() - start
        time.sleep(2.0)
        driver.save_screenshot(shot)
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        print(json.dumps({"down": down, "seconds": took, "chart": _chart(driver),
                          "errors": errors}), flush=True)
    finally:
        driver.quit()


@pytest.mark.root
@pytest.mark.slow
def test_lab_dashboard_shows_a_cut_link_of_a_real_tunnel(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from ratbond.lab.bonded import CLIENT_STATUS_PORT, SERVER_TUNNEL_IP, BondedTunnel
    from ratbond.lab.measure import iperf3
    from ratbond.lab.netns import stop_process
    from ratbond.lab.spec import LinkSpec
    from ratbond.lab.topology import Lab

    if isinstance(browser_tools(), str) and not os.environ.get("CI"):
        pytest.skip(f"{browser_tools()} (CI would fail here)")
    out = artifacts(tmp_path)
    lab = Lab.up([LinkSpec.parse("20:20ms"), LinkSpec.parse("10:40ms")])
    tunnel = None
    try:
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, log_dir=tmp_path)
        tunnel.start(paths=2)
        load = threading.Thread(target=iperf3, args=(lab.client, lab.server, SERVER_TUNNEL_IP),
                                kwargs={"seconds": 40, "parallel": 4, "reverse": True},
                                daemon=True)
        load.start()
        code = (f"from tests.e2e.test_dashboard import drive; drive("
                f"'http://127.0.0.1:{CLIENT_STATUS_PORT}/', {str(out / 'dashboard-lab.png')!r}, "
                f"{str(tmp_path / 'lab-profile')!r}, 'wan2')")
        driver = lab.client.popen(sys.executable, "-c", code, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, cwd=str(Path(__file__).parents[2]))
        assert driver.stdin is not None and driver.stdout is not None
        try:
            ready = json.loads(driver.stdout.readline() or "{}")
            assert sorted(ready.get("cards", {})) == ["wan1 #1", "wan2 #2"], ready
            lab.link(2).blackhole()
            driver.stdin.write(b"cut\n")
            driver.stdin.flush()
            result = json.loads(driver.stdout.readline() or "{}")
            assert driver.wait(30) == 0
        finally:
            stop_process(driver)
        print(f"wan2's card turned down {result['seconds']:.2f} s after the blackhole")
        assert result["down"]["state"] == "down" and result["down"]["since"].count("\u2014")
        assert result["chart"][0] > ready["chart"][0]
        assert result["errors"] == []
        load.join(60)
    finally:
        if tunnel is not None:
            tunnel.stop()
        lab.down()
    assert tunnel.errors() == []
