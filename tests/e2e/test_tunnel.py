"""The bonded tunnel end to end: real TUNs, real policy routing, real UDP, in lab namespaces.

Each test builds its own lab (unique namespace prefix), runs ``ratbond server`` in the server
namespace and ``ratbond client`` in the client namespace, moves data through the tunnel and
checks it by SHA-256; the lab fixture removes everything afterwards, whatever happened.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratbond.lab.bonded import (
    CLIENT_TUNNEL_IP,
    SERVER_TUNNEL_IP,
    SERVER_TUNNEL_IP6,
    BondedTunnel,
    wait_until,
)
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from tests.e2e.tunnel_util import (
    XFER,
    Capture,
    delta,
    finish,
    path_counter,
    ping,
    send_udp,
    start_listener,
    tcp_download,
    tcp_upload,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

MB = 1 << 20
CANARY_PORT = 40999  # a UDP port nothing listens on behind the tunnel
SECRET = "correct horse battery staple"
DIRECT = LinkSpec(None, None, direct=True)
MODES = {
    "plaintext": [],
    "authenticated": [f"--secret={SECRET}"],
    "aes": ["--aes", f"--secret={SECRET}"],
}


@pytest.fixture
def tunnel_factory(tmp_path: Path) -> Iterator[object]:
    """Build labs and tunnels on demand; all are torn down at the end of the test."""
    made: list[tuple[Lab, BondedTunnel]] = []

    def make(links: list[LinkSpec], server_args: list[str] | None = None,
             client_args: list[str] | None = None) -> tuple[Lab, BondedTunnel]:
        lab = Lab.up(links)
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip,
                              server_args=server_args or [], client_args=client_args or [],
                              log_dir=tmp_path)
        made.append((lab, tunnel))
        return lab, tunnel

    yield make
    for lab, tunnel in made:
        tunnel.stop()
        lab.down()
    for _lab, tunnel in made:
        assert tunnel.errors() == [], "an exception reached the event loop"


@pytest.mark.parametrize("mode", list(MODES))
def test_two_links_carry_ping_tcp_udp_and_ipv6_intact(tunnel_factory, mode: str) -> None:
    lab, tunnel = tunnel_factory([DIRECT, DIRECT], MODES[mode], MODES[mode])
    tunnel.start(paths=2)

    assert ping(lab.client, SERVER_TUNNEL_IP)
    assert ping(lab.server, CLIENT_TUNNEL_IP)

    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5001, 50 * MB, f"up-{mode}")
    assert got == {**sent, "seconds": got["seconds"]} and got["bytes"] == 50 * MB
    sent, got = tcp_download(tunnel, SERVER_TUNNEL_IP, 5002, 50 * MB, f"down-{mode}")
    assert got["sha256"] == sent["sha256"] and got["bytes"] == 50 * MB

    receiver = start_listener(lab.server, "udp-recv", SERVER_TUNNEL_IP, "5003", "300", "5")
    lab.client.run(sys.executable, XFER, "udp-send", SERVER_TUNNEL_IP, "5003",
                   "300", "1200")
    udp = finish(receiver)
    assert udp["bad"] == 0 and udp["good"] == 300

    assert lab.client.run("ping", "-6", "-c", "2", "-W", "2", SERVER_TUNNEL_IP6,
                          check=False).returncode == 0
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP6, 5004, 5 * MB, f"v6-{mode}")
    assert got["sha256"] == sent["sha256"] and got["bytes"] == 5 * MB

    # Both ends counted traffic on both paths and dropped nothing they should not have.
    server = tunnel.server_status()
    assert server["channel"]["mode"] == {"plaintext": "plaintext", "authenticated":
                                         "authenticated", "aes": "encrypted"}[mode]
    assert sum(server["drops"].get(k, 0) for k in ("auth_failed", "replayed", "malformed")) == 0


def test_three_emulated_links_move_50_mb_both_ways(tunnel_factory) -> None:
    links = [LinkSpec.parse(t) for t in ("40:5ms", "30:10ms", "20:15ms:0.5%")]
    lab, tunnel = tunnel_factory(links, MODES["aes"], MODES["aes"])
    tunnel.start(paths=3)
    assert ping(lab.client, SERVER_TUNNEL_IP)
    before = path_counter(tunnel.client_status(), "tx_packets")
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5001, 50 * MB, "three-up", timeout=180)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == 50 * MB
    sent, got = tcp_download(tunnel, SERVER_TUNNEL_IP, 5002, 50 * MB, "three-down", timeout=180)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == 50 * MB
    assert len(delta(path_counter(tunnel.client_status(), "tx_packets"), before)) == 3


def test_mux_consistent_hashing_keeps_one_flow_on_one_path(tunnel_factory) -> None:
    args = ["--balance-consistent"]
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], args, [*args, "--mux=2"])
    tunnel.start(paths=4)
    paths = tunnel.client_status()["paths"]
    assert sorted(p["wan"] for p in paths) == ["wan1", "wan1", "wan2", "wan2"]

    before = path_counter(tunnel.client_status(), "tx_packets")
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5001, 20 * MB, "one-flow")
    assert got["sha256"] == sent["sha256"]
    moved = delta(path_counter(tunnel.client_status(), "tx_packets"), before)
    busiest = max(moved.values())
    # 20 MB is ~15,000 data packets: one path carries the flow, the others only HELLOs.
    assert busiest > 14_000
    assert sum(moved.values()) - busiest < 200, moved


def test_roundrobin_spreads_one_flow_over_every_path(tunnel_factory) -> None:
    args = ["--balance-roundrobin"]
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], args, [*args, "--mux=2"])
    tunnel.start(paths=4)
    before = path_counter(tunnel.client_status(), "tx_packets")
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5001, 20 * MB, "sprayed")
    assert got["sha256"] == sent["sha256"]
    moved = delta(path_counter(tunnel.client_status(), "tx_packets"), before)
    total = sum(moved.values())
    # Earliest-delivery spraying shares by each path's measured state, not in strict turns:
    # every path must carry a real part of the single flow (consistent hashing leaves
    # three of them at HELLOs only, < 1.5 %).
    assert len(moved) == 4 and all(count > total * 0.05 for count in moved.values()), moved


def test_client_restart_gets_a_new_session_quickly(tunnel_factory) -> None:
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], MODES["aes"], MODES["aes"])
    tunnel.start(paths=2)
    first = tunnel.server_status()["session"]
    tunnel.stop_client()
    tunnel.start_client()
    took = wait_until(lambda: tunnel.server_status()["session"] not in (None, first)
                      and len(tunnel.paths_up(tunnel.client_status())) == 2, 10,
                      what="new client session")
    assert took < 10
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5001, 5 * MB, "after-client-restart")
    assert got["sha256"] == sent["sha256"]


def test_server_restart_client_reconnects_by_itself(tunnel_factory) -> None:
    lab, tunnel = tunnel_factory([DIRECT, DIRECT], MODES["aes"], MODES["aes"])
    tunnel.start(paths=2)
    tunnel.stop_server()
    tunnel.start_server()
    wait_until(lambda: len(tunnel.paths_up(tunnel.server_status())) == 2, 20,
               what="client back on the restarted server")
    wait_until(lambda: ping(lab.client, SERVER_TUNNEL_IP, count=1), 10, what="ping after restart")
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5001, 5 * MB, "after-server-restart")
    assert got["sha256"] == sent["sha256"]


def test_deleting_a_wan_route_never_sends_a_path_packet_into_the_tunnel(tunnel_factory) -> None:
    lab, tunnel = tunnel_factory([DIRECT, DIRECT], MODES["aes"], MODES["aes"])
    tunnel.start(paths=2)
    # The capture watches the tunnel for path datagrams (port 12345) and for a canary sent
    # through the tunnel on purpose: seeing the canary proves it was capturing, so an empty
    # capture of port 12345 afterwards means nothing leaked.
    capture = Capture(lab.client, "tun660", f"udp port 12345 or udp port {CANARY_PORT}")
    try:
        capture.wait_listening()
        canary = capture.wait_for(f"{SERVER_TUNNEL_IP}.{CANARY_PORT}:", lambda: send_udp(
            lab.client, SERVER_TUNNEL_IP, CANARY_PORT, "canary"))
        receiver = start_listener(lab.server, "tcp-recv", SERVER_TUNNEL_IP, "5001")
        sender = lab.client.popen(sys.executable, XFER, "tcp-send", SERVER_TUNNEL_IP,
                                  "5001", str(30 * MB), "route-flap", stdout=-1, stderr=-1)
        for _ in range(3):  # the flap itself is timed: the route is gone for half a second
            lab.client.run("ip", "route", "del", "default", "table", "101", check=False)
            time.sleep(0.5)
            lab.client.run("ip", "route", "add", "default", "via", "10.201.1.1", "dev", "wan1",
                           "src", "10.201.1.2", "table", "101", check=False)
            time.sleep(0.5)
        sent = finish(sender, timeout=120)
        got = finish(receiver, timeout=120)
    finally:
        lines = capture.stop()
    assert got["sha256"] == sent["sha256"]
    assert canary in lines
    leaked = [line for line in lines if line.strip() and f".{CANARY_PORT}:" not in line]
    assert leaked == [], "path datagrams entered the tunnel:\n" + "\n".join(leaked)
