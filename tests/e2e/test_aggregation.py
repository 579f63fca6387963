"""What a bond owes its users when links die, and where it sends small packets (issue 11).

Every test builds its own lab and runs ``ratbond server``/``client`` with the default
scheduler (``RATBOND_E2E_BALANCE=<mode>`` picks ``--balance-<mode>`` instead) and
``--aes`` (a secret file made for the test)::

    [client ns] wan1..wan3 ──[emu1..3: rate, delay]── [isp ns, SNAT] ── [server ns]
       ratbond client, tun660 10.10.10.1                        ratbond server, tun660 10.10.10.2

The failover tests cut the link busiest with the test's traffic in two ways, one after
the other: the emulator blackholes it (only liveness can tell), and while it is still
dark the busiest survivor is set down (``ip link set down``: netlink tells at once), so
both cuts hit a link that carries the traffic at that moment, whatever the scheduler.
Then both come back. What was in flight on a dying path must arrive anyway, once.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ratbond.lab.bonded import (
    CLIENT_TUNNEL_IP,
    SERVER_TUNNEL_IP,
    BondedTunnel,
    by_link,
    wait_until,
)
from ratbond.lab.measure import free_port, ping_rtt
from ratbond.lab.seqstream import SeqStream
from ratbond.lab.topology import Lab
from tests.e2e.tunnel_util import XFER, LabFactory, delta, finish, start_listener

pytestmark = [pytest.mark.root, pytest.mark.slow]

# No --balance flag: what a user gets. RATBOND_E2E_BALANCE=adaptive (say) tries another.
SCHEDULER = [f"--balance-{os.environ['RATBOND_E2E_BALANCE']}"] if os.environ.get(
    "RATBOND_E2E_BALANCE") else []
LINKS = ["20:10ms", "20:20ms", "20:30ms"]
WARMUP = 3.0          # traffic flowing before the first cut
DARK = 3.0            # how long the first link stays blackholed after it left the bond
DOWN = 3.0            # how long the second link stays down
BUSY_WINDOW = 0.5     # seconds of per-link bytes that say which link is busiest
MB = 1 << 20
HELLOS = 12           # what a path sends in the ~3 s of pings without carrying any of them


Bond = tuple[Lab, BondedTunnel]


@pytest.fixture
def bond(lab: LabFactory, tmp_path: Path) -> Iterator[Callable[[list[str]], Bond]]:
    """``bond(links)``: a lab with those links and a running tunnel over all of them."""
    secret = tmp_path / "secret"
    secret.touch(mode=0o600)
    secret.write_text("aggregation tests: not a real secret")
    made: list[BondedTunnel] = []

    def make(links: list[str]) -> Bond:
        built = lab(links)
        args = ["--aes", f"--secret-file={secret}", *SCHEDULER]
        tunnel = BondedTunnel(built.server, built.client, built.server_public_ip, args, args,
                              log_dir=tmp_path)
        made.append(tunnel)
        tunnel.start(paths=len(links), timeout=30)
        return built, tunnel

    yield make
    for tunnel in made:
        tunnel.stop()
    for tunnel in made:
        assert tunnel.errors() == [], "an exception reached a ratbond event loop"


def _sent_by_link(tunnel: BondedTunnel) -> dict[int, int]:
    """Bytes both ends have sent so far, per link."""
    client = by_link(tunnel.client_status(), "tx_bytes")
    server = by_link(tunnel.server_status(), "tx_bytes")
    return {k: client.get(k, 0) + server.get(k, 0) for k in client.keys() | server.keys()}


def _busiest(tunnel: BondedTunnel, exclude: set[int]) -> int:
    """The link not in ``exclude`` that both ends sent most on during ``BUSY_WINDOW``."""
    before = _sent_by_link(tunnel)
    time.sleep(BUSY_WINDOW)
    moved = delta(_sent_by_link(tunnel), before)
    return max((k for k in moved if k not in exclude), key=lambda k: moved[k])


def _paths_up(tunnel: BondedTunnel, count: int, timeout: float) -> None:
    wait_until(lambda: len(tunnel.paths_up(tunnel.client_status())) == count
               and len(tunnel.paths_up(tunnel.server_status())) == count, timeout,
               what=f"{count} paths up on both ends")


def _cut_twice(lab: Lab, tunnel: BondedTunnel) -> list[int]:
    """Blackhole the busiest link until it left the bond (+ ``DARK``), set the busiest
    survivor down meanwhile for ``DOWN``, restore both; returns the two links cut."""
    count = len(lab.links)
    time.sleep(WARMUP)
    dark = _busiest(tunnel, exclude=set())
    lab.link(dark).blackhole()
    _paths_up(tunnel, count - 1, timeout=10)
    time.sleep(DARK / 2)
    down = _busiest(tunnel, exclude={dark})
    lab.set_wan_updown(down, False)
    _paths_up(tunnel, count - 2, timeout=5)
    time.sleep(DOWN)
    lab.set_wan_updown(down, True)
    lab.link(dark).restore()
    _paths_up(tunnel, count, timeout=15)
    return [dark, down]


def test_udp_stream_survives_a_blackhole_and_a_link_down_without_loss_or_duplicates(
        bond: Callable[[list[str]], Bond]) -> None:
    lab, t = bond(LINKS)
    seconds = 22.0
    up = SeqStream(t.client_ns, t.server_ns, SERVER_TUNNEL_IP, free_port(t.server_ns), seconds)
    down = SeqStream(t.server_ns, t.client_ns, CLIENT_TUNNEL_IP, free_port(t.client_ns),
                     seconds)
    with up, down:
        cut = _cut_twice(lab, t)
        got = {"up": up.finish(), "down": down.finish()}
    assert len(set(cut)) == 2
    assert {d: (seen.sent, seen.foreign) for d, seen in got.items()} == {
        "up": (1100, 0), "down": (1100, 0)}
    assert {d: (seen.lost, seen.duplicates) for d, seen in got.items()} == {
        "up": (0, 0), "down": (0, 0)}, (cut, got)


def test_one_tcp_flow_arrives_intact_across_a_blackhole_and_a_link_down(
        bond: Callable[[list[str]], Bond]) -> None:
    lab, t = bond(LINKS)
    rate = 1.5 * MB  # bytes/s: the flow spans the whole cut schedule (~20 s)
    size = 30 * MB
    receiver = start_listener(t.server_ns, "tcp-recv", SERVER_TUNNEL_IP, "5001")
    sender = t.client_ns.popen(sys.executable, XFER, "tcp-send", SERVER_TUNNEL_IP, "5001",
                               str(size), "aggregation-failover", str(rate),
                               stdout=-1, stderr=-1)
    try:
        cut = _cut_twice(lab, t)
        sent = finish(sender, timeout=90)
        got = finish(receiver, timeout=90)
    finally:
        for proc in (sender, receiver):
            if proc.poll() is None:
                proc.kill()
    assert len(set(cut)) == 2
    assert got["bytes"] == sent["bytes"] == size
    assert got["sha256"] == sent["sha256"]


def test_pings_take_the_lowest_rtt_path_both_ways(
        bond: Callable[[list[str]], Bond]) -> None:
    # The lowest-RTT link is the second: "the first path" cannot pass for "the fastest".
    _lab, t = bond(["20:30ms", "20:5ms", "20:15ms"])
    best = 2
    pings = 50
    before = (by_link(t.client_status(), "tx_packets"), by_link(t.server_status(), "tx_packets"))
    rtt = ping_rtt(t.client_ns, SERVER_TUNNEL_IP, count=pings, interval=0.05)
    after = (by_link(t.client_status(), "tx_packets"), by_link(t.server_status(), "tx_packets"))
    assert rtt["received"] == pings
    moved = {"client": delta(after[0], before[0]), "server": delta(after[1], before[1])}
    # Each ping is one packet each way; the other paths carry only HELLOs (2/s).
    assert {end: m[best] >= pings and all(v <= HELLOS for k, v in m.items() if k != best)
            for end, m in moved.items()} == {"client": True, "server": True}, moved
    # 10 ms round trip on the best link, 30 ms on the next: the pings took the best one.
    assert statistics.median(rtt["rtt_ms"]) < 20, rtt
