"""The status endpoint renders exactly what the snapshot says, in three formats."""

from __future__ import annotations

import asyncio
import json

from ratbond.logs import RateLimitedLog
from ratbond.status import StatusServer, render_html

SNAPSHOT = {
    "role": "client",
    "version": "0.1.0",
    "uptime_s": 12.5,
    "session": "0000abcd",
    "tunnel": {"device": "tun660", "address": "10.10.10.2/30"},
    "counters": {"tun_rx_packets": 42},
    "drops": {"auth_failed": 3, "replayed": 1},
    "paths": [
        {"path_id": 1, "wan": "wan1", "state": "up", "srtt_ms": 40, "tx_packets": 100,
         "rx_bytes": 5000},
        {"path_id": 2, "wan": "wan<2>", "state": "down", "srtt_ms": 0, "tx_packets": 7},
    ],
}


def test_json_and_metrics_carry_the_snapshot() -> None:
    server = StatusServer(lambda: SNAPSHOT)
    code, ctype, body = server.render("/status.json")
    assert code == 200 and ctype == "application/json"
    assert json.loads(body) == SNAPSHOT

    code, _ctype, body = server.render("/metrics")
    text = body.decode()
    assert code == 200
    assert "ratbond_paths_up 1.0" in text
    assert 'ratbond_path_up{path="1",wan="wan1"} 1.0' in text
    assert 'ratbond_path_up{path="2",wan="wan<2>"} 0.0' in text
    assert 'ratbond_path_tx_packets_total{path="1",wan="wan1"} 100.0' in text
    assert 'ratbond_drops_total{reason="auth_failed"} 3.0' in text
    assert "ratbond_tun_rx_packets_total 42.0" in text


def test_html_escapes_peer_controlled_text() -> None:
    page = render_html(SNAPSHOT).decode()
    assert "wan&lt;2&gt;" in page and "wan<2>" not in page
    assert "<tr class='up'>" in page and "<tr class='down'>" in page


def test_unknown_route_is_404() -> None:
    assert StatusServer(lambda: SNAPSHOT).render("/nope")[0] == 404


def test_http_round_trip_on_loopback() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        server = StatusServer(lambda: SNAPSHOT)
        await server.start("127.0.0.1", 0)
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /status.json HTTP/1.0\r\n\r\n")
        ok = await reader.read()
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"DELETE / HTTP/1.0\r\n\r\n")
        bad = await reader.read()
        writer.close()
        await server.close()
        return ok, bad

    ok, bad = asyncio.run(scenario())
    assert ok.startswith(b"HTTP/1.0 200 OK")
    assert json.loads(ok.split(b"\r\n\r\n", 1)[1])["session"] == "0000abcd"
    assert bad.startswith(b"HTTP/1.0 400")


def test_rate_limited_log_holds_repeats_and_reports_them() -> None:
    lines: list[str] = []

    class Sink:
        def log(self, _level: int, message: str, *args: object) -> None:
            lines.append(message % args if args else message)

    clock = [0.0]
    limited = RateLimitedLog(Sink(), interval=10.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert limited.log(20, "k", "bad datagram from %s", "x")
    for _ in range(50):
        assert not limited.log(20, "k", "bad datagram from %s", "x")
    clock[0] = 10.0
    assert limited.log(20, "k", "bad datagram from %s", "x")
    assert lines == ["bad datagram from x", "bad datagram from x (50 similar suppressed)"]
