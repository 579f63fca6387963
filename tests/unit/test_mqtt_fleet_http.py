"""The fleet page, ``/fleet.json``, ``/fleet.txt`` and ``/metrics`` over a real loopback
socket (the controller's own HTTP thread), and the ``--http-*`` flags of ``ratbond fleet``."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ratbond.cli import main
from ratbond.mqtt.fleet import STALE_AFTER_S, FleetView, run_fleet
from ratbond.mqtt.fleet_http import FleetHttpThread, FleetServer, fleet_document
from ratbond.mqtt.fleet_metrics import metrics_text
from ratbond.mqtt.options import MqttSettings
from ratbond.mqtt.signing import write_keypair

NOW = 1_800_000_000.0
TOKEN = "fleet-token-0123456789"


def _status(up: int, known: int, rx: float, tx: float) -> bytes:
    return json.dumps({"state": "up" if up == known else "degraded",
                       "totals": {"paths_up": up, "paths_known": known,
                                  "rates": {"rx_10s": rx, "tx_10s": tx}}}).encode()


def fleet(now: float = NOW) -> FleetView:
    """A client with both paths up, a server with one of two down, an offline router."""
    view = FleetView()
    view.update("ratbond/client/site1/status", _status(2, 2, 1_250_000, 250_000), now - 3)
    view.update("ratbond/client/site1/state", b"online", now - 3)
    view.update("ratbond/server/vps/status", _status(1, 2, 250_000, 1_250_000), now - 4)
    view.update("ratbond/server/vps/state", b"online", now - 4)
    view.update("ratbond/server/vps/events", b'{"event": "path_down", "path_id": 2}', now - 2)
    view.update("ratbond/router/r1/hello", json.dumps(
        {"settings_version": 3, "client": {"running": False}}).encode(), now - 30)
    view.update("ratbond/router/r1/state", b"offline", now - 1)
    view.update("ratbond/client/site1/status", b"[1, 2]", now)  # not an object: ignored
    return view


def by_name(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    members = doc["members"]
    assert isinstance(members, list)
    return {f"{m['role']}/{m['name']}": m for m in members}


# --------------------------------------------------------------------------- the data


def test_fleet_json_has_one_entry_per_member_and_flags_what_needs_attention() -> None:
    doc = fleet_document(fleet().snapshot(NOW), NOW, ignored=1)
    assert doc["counts"] == {"members": 3, "online": 2, "attention": 2, "ignored_messages": 1}
    members = by_name(doc)
    assert list(members) == ["client/site1", "router/r1", "server/vps"]
    client = members["client/site1"]
    assert client == {"role": "client", "name": "site1", "mqtt": "online", "tunnel": "up",
                      "paths_up": 2, "paths_known": 2, "settings_version": None,
                      "client_running": None, "rx_bytes_per_second": 1_250_000.0,
                      "tx_bytes_per_second": 250_000.0, "last_seen": NOW - 3,
                      "last_seen_ago_s": 3.0, "events": 0, "last_event": None,
                      "stale": False, "attention": False}
    server = members["server/vps"]
    assert server["attention"] and server["last_event"] == "path_down 2"  # a path is down
    router = members["router/r1"]
    assert router["mqtt"] == "offline" and router["attention"]
    assert router["settings_version"] == 3 and router["client_running"] is False
    assert router["paths_up"] is None and router["tunnel"] == "no client"
    json.dumps(doc, allow_nan=False)  # what the endpoint sends


def test_a_member_silent_for_a_minute_stands_out_even_while_online() -> None:
    view = fleet()
    later = NOW + STALE_AFTER_S + 1
    members = by_name(fleet_document(view.snapshot(later), later))
    assert members["client/site1"]["stale"] and members["client/site1"]["attention"]
    never = FleetView()
    never.update("ratbond/server/x/state", b"online", NOW)  # a state, never a status
    assert by_name(fleet_document(never.snapshot(NOW), NOW))["server/x"]["stale"]


def test_metrics_are_per_member_with_units_and_no_empty_family() -> None:
    view = fleet()
    text = metrics_text(view.snapshot(NOW), view.ignored).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {
        "ratbond_fleet_members", "ratbond_fleet_ignored_messages", "ratbond_fleet_member_up",
        "ratbond_fleet_paths_up", "ratbond_fleet_paths_known",
        "ratbond_fleet_rx_bytes_per_second", "ratbond_fleet_tx_bytes_per_second",
        "ratbond_fleet_last_seen_seconds", "ratbond_fleet_settings_version"}
    assert families["ratbond_fleet_members"].samples[0].value == 3
    assert families["ratbond_fleet_ignored_messages"].type == "counter"
    assert families["ratbond_fleet_ignored_messages"].samples[0].value == 1

    def values(name: str) -> dict[tuple[str, str], float]:
        return {(s.labels["role"], s.labels["name"]): s.value for s in families[name].samples}
    assert values("ratbond_fleet_member_up") == {("client", "site1"): 1.0,
                                                 ("server", "vps"): 1.0, ("router", "r1"): 0.0}
    assert values("ratbond_fleet_paths_up") == {("client", "site1"): 2.0, ("server", "vps"): 1.0}
    assert values("ratbond_fleet_paths_known") == {("client", "site1"): 2.0,
                                                   ("server", "vps"): 2.0}
    assert values("ratbond_fleet_rx_bytes_per_second")[("client", "site1")] == 1_250_000
    assert values("ratbond_fleet_tx_bytes_per_second")[("server", "vps")] == 1_250_000
    assert values("ratbond_fleet_last_seen_seconds") == {
        ("client", "site1"): 3.0, ("server", "vps"): 2.0, ("router", "r1"): 30.0}
    assert values("ratbond_fleet_settings_version") == {("router", "r1"): 3.0}


def test_an_empty_fleet_exports_only_the_member_count() -> None:
    text = metrics_text([]).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"ratbond_fleet_members", "ratbond_fleet_ignored_messages"}
    assert families["ratbond_fleet_members"].samples[0].value == 0


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def served() -> Iterator[tuple[FleetHttpThread, FleetView]]:
    view = fleet(time.time())
    page = FleetHttpThread(FleetServer(view, token=TOKEN), "127.0.0.1", 0)
    page.start()
    try:
        yield page, view
    finally:
        page.stop()
    assert not page._thread.is_alive(), "the HTTP thread outlived stop()"


def get(page: FleetHttpThread, target: str, token: str | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{page.port}{target}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("target", ["/", "/fleet.json", "/fleet.txt", "/metrics"])
def test_every_endpoint_wants_the_token(served: tuple[FleetHttpThread, FleetView],
                                        target: str) -> None:
    page, _ = served
    status, headers, body = get(page, target)
    assert status == 401 and b"token is required" in body
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert get(page, target, token="wrong-" + TOKEN)[0] == 401
    assert get(page, target, token=TOKEN)[0] == 200
    sep = "&" if "?" in target else "?"
    assert get(page, f"{target}{sep}token={TOKEN}")[0] == 200
    assert get(page, "/nothing-here", token=TOKEN)[0] == 404


def test_json_text_and_metrics_agree_on_the_fleet(
        served: tuple[FleetHttpThread, FleetView]) -> None:
    page, view = served
    status, headers, body = get(page, "/fleet.json", TOKEN)
    assert status == 200 and headers["Content-Type"] == "application/json"
    members = by_name(json.loads(body))
    assert members["router/r1"]["mqtt"] == "offline"
    assert headers["Cache-Control"] == "no-store"
    _, _, text = get(page, "/fleet.txt", TOKEN)
    lines = text.decode().splitlines()
    assert lines[0].split()[:3] == ["ROLE", "NAME", "MQTT"]
    assert [line.split()[1] for line in lines[1:]] == ["site1", "r1", "vps"]
    _, headers, metrics = get(page, "/metrics", TOKEN)
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert 'ratbond_fleet_member_up{name="r1",role="router"} 0.0' in metrics.decode()
    # The view changes under the server (paho's thread does this): the next request shows it.
    view.update("ratbond/router/r1/state", b"online", time.time())
    assert by_name(json.loads(get(page, "/fleet.json", TOKEN)[2]))["router/r1"]["mqtt"] == \
        "online"


def test_the_page_is_self_contained_and_its_csp_allows_only_its_inline_code(
        served: tuple[FleetHttpThread, FleetView]) -> None:
    page, _ = served
    status, headers, body = get(page, f"/?token={TOKEN}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    for tag in ("style", "script"):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert len(blocks) == 1, tag
        digest = base64.b64encode(hashlib.sha256(blocks[0].encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in csp, tag
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"?https?:", html), "a CDN reference"
    assert 'name="viewport"' in html  # phones
    assert "fetch(\"fleet.json\"" in html and "innerHTML" not in html.replace(
        "never innerHTML", "")
    noscript = re.search(r"<noscript>(.*?)</noscript>", html, re.S)
    assert noscript is not None and f'href="fleet.txt?token={TOKEN}"' in noscript.group(1)


def test_an_idle_http_client_blocks_neither_other_requests_nor_the_mqtt_side(
        served: tuple[FleetHttpThread, FleetView]) -> None:
    page, view = served
    with socket.create_connection(("127.0.0.1", page.port or 0), timeout=5) as idle:
        idle.sendall(b"GET /fleet.json HTTP/1.0\r\n")  # and never the end of the headers
        started = time.monotonic()

        def feed() -> None:
            for _ in range(1000):
                view.update("ratbond/client/site1/state", b"online", time.time())
        fed = threading.Thread(target=feed)
        fed.start()
        fed.join(2)
        assert not fed.is_alive(), "view.update stalled behind an HTTP client"
        assert get(page, "/fleet.json", TOKEN)[0] == 200
        assert time.monotonic() - started < 2


def test_no_token_beyond_loopback_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    page = FleetHttpThread(FleetServer(FleetView()), "0.0.0.0", 0)
    with caplog.at_level(logging.INFO, "ratbond.fleet"):
        page.start()
        page.stop()
    assert "fleet page on 0.0.0.0 without --http-token-file" in caplog.text
    quiet = FleetHttpThread(FleetServer(FleetView()), "127.0.0.1", 0)
    caplog.clear()
    with caplog.at_level(logging.INFO, "ratbond.fleet"):
        quiet.start()
        quiet.stop()
    assert "without --http-token-file" not in caplog.text


# --------------------------------------------------------------------------- the flags


def test_a_port_in_use_stops_the_controller_naming_the_flag(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_keypair(tmp_path / "fleet.key")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        from ratbond.mqtt.signing import load_private_key
        with caplog.at_level(logging.ERROR, "ratbond.fleet"):
            code = run_fleet(MqttSettings("127.0.0.1", 1, "ctl", None, None),
                             load_private_key(tmp_path / "fleet.key"), tmp_path, watch=False,
                             validity=3600, stopping=threading.Event(),
                             http=("127.0.0.1", port))
    assert code == 1
    assert f"--http-listen-addr 127.0.0.1:{port}: cannot listen" in caplog.text


@pytest.mark.parametrize(("flags", "message"), [
    (["--http-listen-addr=127.0.0.1"], "--http-listen-addr: '127.0.0.1' has no port"),
    (["--http-listen-addr=127.0.0.1:99999"], "--http-listen-addr"),
    (["--http-token-file=/nonexistent/token"], "--http-token-file: /nonexistent/token: "
                                               "cannot read"),
    (["--http-listen-addr=disable", "--http-token-file=/x"], "the page is off"),
])
def test_bad_http_flags_stop_the_start_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str],
        message: str) -> None:
    write_keypair(tmp_path / "fleet.key")
    code = main(["fleet", "--mqtt-broker-addr=127.0.0.1:1", f"--settings-dir={tmp_path}",
                 f"--key={tmp_path / 'fleet.key'}", "--nosyslog", *flags])
    assert code == 2
    assert message in capsys.readouterr().err
