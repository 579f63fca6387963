"""``ratbond status``: exact table of a recorded snapshot, exit codes 0/1/2, token, watch."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.cli import build_parser
from ratbond.status import StatusServer, to_dict
from ratbond.status.model import build_model
from ratbond.status_cli import FetchError, add_subparser, run, status_url
from tests.unit.test_status_snapshots import CLIENT_SNAPSHOT, fresh
from tests.unit.test_status_text import CLIENT_RATES, CLIENT_TEXT


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_subparser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["status", *argv])


def served(snapshot: dict[str, Any], rates: Any = None) -> Any:
    """A fetcher returning what /status.json would serve, as JSON text decoded again."""
    body = json.dumps(to_dict(build_model(snapshot, rates)))
    seen: list[tuple[str, str | None]] = []

    def fetch(url: str, token: str | None) -> Any:
        seen.append((url, token))
        return json.loads(body)

    fetch.seen = seen  # type: ignore[attr-defined]
    return fetch


def run_captured(args: argparse.Namespace, fetch: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(args, out=out, err=err, fetch=fetch, sleep=lambda _s: None)
    return code, out.getvalue(), err.getvalue()


def test_registered_on_the_main_parser() -> None:
    args = build_parser().parse_args(["status", "--json", "--url", "http://h:1"])
    assert args.handler is run and args.json and args.url == "http://h:1"


def test_table_of_a_recorded_snapshot_is_exact_and_degraded_exits_1() -> None:
    fetch = served(CLIENT_SNAPSHOT, CLIENT_RATES)
    code, out, err = run_captured(parse(), fetch)
    assert (code, out, err) == (1, CLIENT_TEXT, "")
    assert fetch.seen == [("http://127.0.0.1:8091/status.json", None)]


@pytest.mark.parametrize(("states", "expected"), [
    (("up", "up"), 0), (("up", "down"), 1), (("connecting", "up"), 1), (("down", "down"), 2)])
def test_exit_code_follows_path_states(states: tuple[str, str], expected: int) -> None:
    snap = fresh(CLIENT_SNAPSHOT)
    for path, state in zip(snap["paths"], states, strict=True):
        path["state"] = state
    assert run_captured(parse(), served(snap))[0] == expected


def test_no_path_is_down() -> None:
    assert run_captured(parse(), served({"role": "client", "paths": []}))[0] == 2


def test_unreachable_exits_2_with_one_line() -> None:
    def fetch(url: str, _token: str | None) -> Any:
        raise FetchError(f"{url}: cannot connect: refused")

    code, out, err = run_captured(parse("--url", "10.0.0.1:9"), fetch)
    assert (code, out) == (2, "")
    assert err == "ratbond status: http://10.0.0.1:9/status.json: cannot connect: refused\n"


def test_json_output_is_the_model() -> None:
    code, out, _err = run_captured(parse("--json"), served(CLIENT_SNAPSHOT, CLIENT_RATES))
    assert code == 1
    assert json.loads(out) == to_dict(build_model(CLIENT_SNAPSHOT, CLIENT_RATES))


def test_watch_redraws_in_place_and_stops_after_count() -> None:
    code, out, _err = run_captured(parse("--watch", "--count", "3"), served(CLIENT_SNAPSHOT))
    assert code == 1
    assert out.count("\x1b[H\x1b[2J") == 3
    assert out.count("ratbond client 0.1.0") == 3


def test_watch_keeps_an_error_on_screen_and_recovers() -> None:
    good = served(CLIENT_SNAPSHOT)
    calls = [0]

    def flaky(url: str, token: str | None) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise FetchError(f"{url}: cannot connect: refused")
        return good(url, token)

    code, out, err = run_captured(parse("--watch", "--count", "3"), flaky)
    frames = out.split("\x1b[H\x1b[2J")[1:]
    assert code == 1 and err == "" and len(frames) == 3
    assert frames[1] == ("ratbond status: http://127.0.0.1:8091/status.json: cannot connect: "
                         "refused\n")
    assert frames[0] == frames[2] and frames[2].startswith("ratbond client 0.1.0")


def test_status_url_forms() -> None:
    assert status_url("http://h:1/") == "http://h:1/status.json"
    assert status_url("h:1") == "http://h:1/status.json"
    assert status_url("https://h/ratbond/status.json") == "https://h/ratbond/status.json"


@pytest.fixture
def live_server() -> Iterator[int]:
    """A real StatusServer with a token on a loopback port, in a thread of its own."""
    loop = asyncio.new_event_loop()
    snap = fresh(CLIENT_SNAPSHOT)
    snap["paths"][1]["state"] = "up"
    server = StatusServer(lambda: snap, token="t0ken")
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    assert server.port is not None
    yield server.port
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_over_http_token_required_then_accepted(live_server: int, tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{live_server}"
    out, err = io.StringIO(), io.StringIO()
    assert run(parse("--url", url), out=out, err=err) == 2
    assert "a token is required or was refused" in err.getvalue()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    out, err = io.StringIO(), io.StringIO()
    assert run(parse("--url", url, "--token-file", str(token)), out=out, err=err) == 0
    assert "tunnel UP (2/2 paths up)" in out.getvalue() and err.getvalue() == ""


def test_unreadable_token_file_exits_2(tmp_path: Any) -> None:
    code, _out, err = run_captured(parse("--token-file", str(tmp_path / "none")),
                                   served(CLIENT_SNAPSHOT))
    assert code == 2 and "cannot read the HTTP token" in err


def test_a_closed_port_is_unreachable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, err = io.StringIO(), io.StringIO()
    assert run(parse("--url", f"127.0.0.1:{port}"), out=out, err=err) == 2
    assert "cannot connect" in err.getvalue() and out.getvalue() == ""


# /status.json as a real lab tunnel served it (recorded: --aes, 2 links, a 4-flow download,
# link 2 blackholed 5 s before), and what `ratbond status` prints for it.
RECORDED = Path(__file__).parent

RECORDED_CLIENT_TEXT = (
    "ratbond client 0.1.0  uptime 21s  tunnel DEGRADED (1/2 paths up)\n"
    "session 9e0bfc1e  server 198.18.0.100:12345  channel encrypted chacha20-poly1305  rekeys \u2013\n"  # noqa: E501
    "tun tun660 10.10.10.1/30  mtu 1391  default route yes  balance consistent\n"
    "\n"
    "PATH  WAN         STATE        SINCE  RTT ms   LOSS     CAP   TX 1s   RX 1s  TX 10s  RX 10s  REASON\n"  # noqa: E501
    "   1  wan1        up             20s    59.0   0.0%    18.9    0.64   18.47    0.57   18.09\n"
    "   2  wan2        down            3s       \u2013   0.0%     0.0    0.00    0.00    0.06    3.95  silent\n"  # noqa: E501
    "      total       1/2 up                                       0.64   18.47    0.62   22.04\n"
    "\n"
    "wans: wan1 10.201.1.2  wan2 10.201.2.2\n"
    "drops: bond_linkdown_ignored 1\n"
    "reorder: duplicates 0  gave_up 0  held 0  held_bytes 0  late 0  passed 0  rejected 0\n"
    "  released_by_bound 0  released_by_timeout 0  skipped 0  timeout_s 0.045\n"
    "counters: conn_handshake_no_path 0  conn_handshakes_started 1  conn_rx_authenticated 53112\n"
    "  conn_rx_datagrams 53114  conn_sessions 1  conn_tx_datagrams 33551  conn_tx_no_session 0\n"
    "  conn_tx_unsealed 0  rx_datagrams 53114  tun_rx_dropped 0  tun_rx_packets 24176  tun_tx_errors 0\n"  # noqa: E501
    "  tun_tx_packets 43372  tx_no_socket 0  tx_socket_full 0\n"
    "CAP (capacity estimate) and rates in Mbit/s; rates over the last 1 s and 10 s\n"
)

RECORDED_SERVER_TEXT = (
    "ratbond server 0.1.0  uptime 21s  tunnel DEGRADED (1/2 paths up)\n"
    "session 9e0bfc1e  listen 0.0.0.0:12345  channel encrypted chacha20-poly1305  rekeys \u2013\n"
    "tun tun660 10.10.10.2/30  mtu 1391  balance consistent\n"
    "\n"
    "session 9e0bfc1e (active)  client 198.18.0.11  age 21s  balance consistent\n"
    "PATH  WAN                STATE        SINCE  RTT ms   LOSS     CAP   TX 1s   RX 1s  TX 10s  RX 10s  REASON\n"  # noqa: E501
    "   1  198.18.0.11:44347  up             20s    79.0   0.0%    20.4   18.47    0.63   17.87    0.56\n"  # noqa: E501
    "   2  198.18.0.12:53349  down            3s       \u2013   0.0%     0.0    0.00    0.00    3.94    0.06  silent\n"  # noqa: E501
    "      total              1/2 up                                      18.47    0.63   21.82    0.62\n"  # noqa: E501
    "  drops: linkdown_ignored 1  queue_full 4235\n"
    "  reorder: duplicates 0  gave_up 0  held 0  held_bytes 0  late 0  passed 0  rejected 0\n"
    "    released_by_bound 0  released_by_timeout 0  skipped 0  timeout_s 0.059\n"
    "\n"
    "drops: bond_linkdown_ignored 1  bond_queue_full 4235\n"
    "counters: conn_rx_authenticated 33921  conn_rx_datagrams 33923  conn_rx_inactive 0  conn_sessions 1\n"  # noqa: E501
    "  conn_tx_datagrams 54956  conn_tx_no_address 0  conn_tx_no_session 0  conn_tx_unsealed 0\n"
    "  rx_datagrams 33923  tun_rx_dropped 4235  tun_rx_packets 48616  tun_tx_errors 0\n"
    "  tun_tx_packets 24742  tx_no_socket 0  tx_socket_full 0\n"
    "CAP (capacity estimate) and rates in Mbit/s; rates over the last 1 s and 10 s\n"
)


@pytest.mark.parametrize(("end", "golden", "code"), [
    ("client", RECORDED_CLIENT_TEXT, 1), ("server", RECORDED_SERVER_TEXT, 1)])
def test_a_recorded_status_document_prints_exactly(end: str, golden: str, code: int) -> None:
    document = json.loads((RECORDED / f"test_status_recorded_{end}.json").read_text())
    assert document["schema_version"] == 1
    assert run_captured(parse(), lambda _url, _token: document) == (code, golden, "")
