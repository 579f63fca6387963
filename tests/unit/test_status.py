"""The status server: routes, the bearer token, HTTP on loopback, the sampling task, and
that nothing outside the model's known fields ever leaves it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from typing import Any

import pytest

from ratbond.logs import RateLimitedLog
from ratbond.status import SCHEMA_VERSION, StatusServer, TokenError, load_token
from tests.unit.test_status_snapshots import CLIENT_SNAPSHOT, SERVER_SNAPSHOT, fresh

ROUTES = ("/", "/status", "/status.json", "/status.schema.json", "/history.json", "/metrics")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_routes_and_content_types() -> None:
    server = StatusServer(lambda: CLIENT_SNAPSHOT)
    expected = {"/": "text/html", "/status": "text/plain", "/status.json": "application/json",
                "/history.json": "application/json", "/metrics": "text/plain",
                "/status.schema.json": "application/json"}
    for route, ctype in expected.items():
        response = server.render(route)
        assert response.status == 200, route
        assert response.content_type.startswith(ctype), route
    assert server.render("/nope").status == 404
    assert server.render("/status.json?" + "&".join(f"a{i}=1" for i in range(40))).status == 400
    assert server.render("http://[::1/status").status == 400
    model = json.loads(server.render("/status.json").body)
    assert model["schema_version"] == SCHEMA_VERSION and model["state"] == "degraded"


def test_status_json_rates_come_from_the_sampler() -> None:
    clock = FakeClock()
    snap = fresh(CLIENT_SNAPSHOT)
    server = StatusServer(lambda: snap, clock=clock)
    for step in range(3):
        clock.now = 100.0 + step
        snap["paths"][0]["tx_bytes"] = 1_000_000 + 50_000 * step
        server.sample()
    clock.now = 102.5
    model = json.loads(server.render("/status.json").body)
    path = model["paths"][0]
    assert path["rates"]["tx_1s"] == 50_000.0 and path["rates"]["tx_10s"] == 50_000.0
    assert path["rates"]["rx_1s"] == 0.0
    assert model["totals"]["rates"]["tx_1s"] == 50_000.0 + 0.0
    history = json.loads(server.render("/history.json?since=100.5").body)
    assert history["times"] == [101.0, 102.0]
    assert history["paths"][0]["tx"] == [50_000.0, 50_000.0]


def test_state_age_is_tracked_when_the_runtime_gives_none() -> None:
    clock = FakeClock()
    snap = fresh(CLIENT_SNAPSHOT)
    for path in snap["paths"]:
        del path["since_s"]
    server = StatusServer(lambda: snap, clock=clock)
    server.sample()
    clock.now = 107.0
    server.sample()
    assert [p["since_s"] for p in json.loads(server.render("/status.json").body)["paths"]] == [
        7.0, 7.0]
    snap["paths"][1]["state"] = "up"  # changed after the last sample: 0 s in the new state
    assert json.loads(server.render("/status.json").body)["paths"][1]["since_s"] == 0.0


def test_token_required_and_accepted() -> None:
    server = StatusServer(lambda: CLIENT_SNAPSHOT, token="s3cret-token")
    for route in ROUTES:
        refused = server.render(route)
        assert refused.status == 401, route
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"degraded" not in refused.body and b"wan1" not in refused.body
        assert server.render(route, {"authorization": "Bearer wrong"}).status == 401
        assert server.render(route + "?token=s3cret-tokenX").status == 401
        assert server.render(route, {"authorization": "Bearer s3cret-token"}).status == 200
        assert server.render(route, {"authorization": "bearer  s3cret-token "}).status == 200
        assert server.render(route + "?token=s3cret-token").status == 200
    assert server.render("/nope?token=s3cret-token").status == 404
    assert server.render("/nope").status == 401  # no probing for routes without the token


def test_dashboard_keeps_a_query_token_for_its_no_script_link() -> None:
    server = StatusServer(lambda: CLIENT_SNAPSHOT, token="a b&c")
    page = server.render("/?token=a%20b%26c").body.decode()
    assert '<a href="status?token=a%20b%26c">' in page
    assert "<noscript>" in page
    assert "status?token" not in StatusServer(lambda: CLIENT_SNAPSHOT).render("/").body.decode()


def test_dashboard_is_self_contained_and_its_csp_matches_the_inline_code() -> None:
    response = StatusServer(lambda: CLIENT_SNAPSHOT).render("/")
    page = response.body.decode()
    csp = response.headers["Content-Security-Policy"]
    for tag in ("script", "style"):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp, tag
    assert "default-src 'none'" in csp
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # no CDN, no external font
    assert "@import" not in page and "url(" not in page


def test_snapshot_failure_is_a_503_not_an_exception() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("bug")

    server = StatusServer(broken)
    server.sample()
    assert server.render("/status.json").status == 503
    assert server.render("/history.json").status == 200


SECRET = "c2VjcmV0LWtleS1tYXRlcmlhbC0xMjM0NTY3ODkw"


def planted() -> dict[str, Any]:
    """A snapshot with a secret-looking value under every kind of unexpected key."""
    snap = fresh(SERVER_SNAPSHOT)
    snap["psk"] = SECRET
    snap["keys"] = {"send": SECRET, "recv": [SECRET]}
    snap["tunnel"]["secret"] = SECRET
    snap["channel"] = {"mode": "encrypted", "cipher": "aes-256-gcm", "key": SECRET}
    snap["counters"]["session_key"] = SECRET  # a known map, but not a number
    snap["counters"][SECRET] = 1               # a name that is no identifier
    snap["drops"]["x"] = {"nested": SECRET}
    snap["sessions"]["0000abcd"]["key"] = SECRET
    for path in snap["paths"]:
        path["tx_key"] = SECRET
        path["keys"] = (SECRET,)
    return snap


def test_no_unknown_field_reaches_any_endpoint() -> None:
    snap = planted()
    server = StatusServer(lambda: snap, token="tok")
    server.sample(1.0)
    server.sample(2.0)
    for route in ROUTES:
        body = server.render(route + "?token=tok").body.decode()
        assert SECRET not in body, route
        assert SECRET.lower() not in body.lower(), route
    # the same value under a known field is shown: the check above can fail
    snap["paths"][0]["down_reason"] = SECRET
    snap["paths"][0]["state"] = "down"
    assert SECRET in server.render("/status.json?token=tok").body.decode()


def test_token_file(tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text("abc123\n")
    assert load_token(path) == "abc123"
    path.write_text(" \n")
    with pytest.raises(TokenError, match="empty"):
        load_token(path)
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing")


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await reader.read()
    writer.close()
    return data


def test_http_round_trip_on_loopback_with_sampling_task() -> None:
    snap = fresh(CLIENT_SNAPSHOT)
    calls = []

    def snapshot() -> dict[str, Any]:
        calls.append(1)
        snap["paths"][0]["tx_bytes"] += 1000
        return snap

    async def scenario() -> dict[str, bytes]:
        server = StatusServer(snapshot, token="tok", interval_s=0.02)
        await server.start("127.0.0.1", 0)
        assert server.port
        port = server.port
        for _ in range(200):
            if len(server.sampler) >= 3:
                break
            await asyncio.sleep(0.01)
        out = {
            "json": await _request(port, b"GET /status.json HTTP/1.0\r\n"
                                         b"Authorization: Bearer tok\r\n\r\n"),
            "noauth": await _request(port, b"GET /status.json HTTP/1.0\r\n\r\n"),
            "head": await _request(port, b"HEAD /status?token=tok HTTP/1.1\r\nHost: x\r\n\r\n"),
            "delete": await _request(port, b"DELETE / HTTP/1.0\r\n\r\n"),
            "garbage": await _request(port, b"\x00\x01\r\n\r\n"),
        }
        await server.close()
        samples = len(server.sampler)
        await asyncio.sleep(0.1)
        assert len(server.sampler) == samples  # the task stopped with close()
        return out

    out = asyncio.run(scenario())
    head, _, body = out["json"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    assert b"Cache-Control: no-store" in head
    model = json.loads(body)
    assert model["session"] == "0000abcd"
    assert model["paths"][0]["rates"]["tx_1s"] > 0  # sampled by the task, not by hand
    assert out["noauth"].startswith(b"HTTP/1.0 401 Unauthorized")
    assert out["head"].startswith(b"HTTP/1.0 200 OK") and out["head"].endswith(b"\r\n\r\n")
    assert out["delete"].startswith(b"HTTP/1.0 405") and b"Allow: GET, HEAD" in out["delete"]
    assert out["garbage"].startswith(b"HTTP/1.0 400")
    assert len(calls) >= 3


def test_garbage_requests_never_reach_the_event_loop() -> None:
    import random

    rng = random.Random(12)
    requests = [b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n",   # over the request limit
                b"GET /status?" + b"&x=" * 50 + b" HTTP/1.0\r\n\r\n",
                b"GET http://[::1/ HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\n",  # no end
                b"\r\n\r\n", b"GET /metrics HTTP/1.0\r\nAuthorization: Bearer \xff\r\n\r\n"]
    requests += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\r\n\r\n"
                 for _ in range(40)]
    errors: list[dict[str, Any]] = []

    async def scenario() -> bytes:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        server = StatusServer(lambda: CLIENT_SNAPSHOT, token="tok")
        await server.start("127.0.0.1", 0)
        assert server.port
        for raw in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            if not raw.endswith(b"\r\n\r\n"):
                writer.write_eof()
            await reader.read()
            writer.close()
        still = await _request(server.port, b"GET /status.json?token=tok HTTP/1.0\r\n\r\n")
        await server.close()
        return still

    assert asyncio.run(scenario()).startswith(b"HTTP/1.0 200 OK")
    assert errors == []


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
