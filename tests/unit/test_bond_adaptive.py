"""The adaptive bond under a fake clock over simulated rated links: byte shares follow
capacity, small packets take the shortest path, nothing is lost or duplicated when a
path dies, redundancy, backup paths, rate hints and an idle bond that sleeps."""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Callable
from typing import cast

import pytest

from ratbond.bond import Bond, BondConfig, LinkRate
from ratbond.kcp import EngineName
from tests.simnet import Side, SimNet

from .test_bond_session import ident
from .test_bond_session import udp as dns


def udp(flow: int, number: int, size: int = 60) -> bytes:
    """Like test_bond_session.udp (a DNS packet: small class), but to port 5201 (bulk
    once it is SMALL_PACKET bytes or more)."""
    packet = bytearray(dns(flow, number, size))
    packet[22:24] = (5201).to_bytes(2, "big")
    return bytes(packet)


ENGINES = ["c"] + (["python"] if importlib.util.find_spec("ratbond.kcp.core") else [])
PACKET = 1000  # bytes of each bulk test packet (one KCP segment)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> EngineName:
    return cast(EngineName, request.param)


def rated_pair(
    engine: EngineName,
    links: dict[int, tuple[float, float]],
    *,
    buffer: float = 0.05,
    loss: float = 0.0,
    **options: object,
) -> SimNet:
    """Bonds over links ``{id: (datagrams/s, one-way delay)}``, every path up."""
    config = BondConfig(kcp_engine=engine, **options)  # type: ignore[arg-type]
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    for path_id, (rate, delay) in links.items():
        net.link(path_id, delay=delay, rate=rate, buffer=buffer, loss=loss)
        net.client.bond.add_path(path_id, 0.0)
    net.run_for(1.0)
    assert net.client.bond.live_paths() == sorted(links)
    return net


def greedy(net: SimNet, side: Side, seconds: float, *, flows: int = 1, start: int = 0) -> int:
    """Offer ``side`` more than it can carry for ``seconds`` (every 2 ms); packets sent."""
    end = net.now + seconds
    number = start
    while net.now < end:
        while side.bond.send_packet(udp(number % flows, number, size=PACKET), net.now):
            number += 1
        net.run_for(0.002)
    return number - start


def stream(
    net: SimNet, side: Side, seconds: float, *, pps: float = 100.0, flows: int = 8, start: int = 0
) -> list[bytes]:
    """A sequence-numbered UDP stream of ``pps`` from ``flows`` source ports."""
    sent = []
    for number in range(start, start + round(seconds * pps)):
        packet = udp(number % flows, number, size=200)
        side.bond.send_packet(packet, net.now)
        sent.append(packet)
        net.run_for(1.0 / pps)
    return sent


def test_a_fresh_path_reaches_its_link_rate_within_a_second(engine: EngineName) -> None:
    net = rated_pair(engine, {1: (4000.0, 0.02)}, balance="adaptive")  # 40 ms RTT
    greedy(net, net.client, 1.0)
    path = net.client.bond.snapshot(now=net.now).paths[1]
    assert path.rate_pps >= 0.8 * 4000
    assert path.capacity_bps == pytest.approx(path.rate_pps * 8 * 1400, rel=0.01)
    assert path.rate_phase != "startup"  # it found the pipe full and left startup
    assert path.min_rtt_ms == pytest.approx(40, abs=5)


def test_the_estimate_survives_an_idle_period_and_the_rates_fall_to_zero(
    engine: EngineName,
) -> None:
    net = rated_pair(engine, {1: (2000.0, 0.02)}, balance="adaptive")
    greedy(net, net.client, 2.0)
    busy = net.client.bond.snapshot(now=net.now).paths[1]
    assert busy.tx_rate_bps >= 0.8 * 2000 * PACKET * 8
    net.run_for(5.0)  # idle: only HELLOs
    idle = net.client.bond.snapshot(now=net.now).paths[1]
    assert idle.rate_pps >= 0.8 * busy.rate_pps  # no collapse
    assert idle.tx_rate_bps == 0
    assert net.server.bond.snapshot(now=net.now).paths[1].rx_rate_bps == 0
    before = len(net.server.packets)
    greedy(net, net.client, 0.5, start=10**6)
    assert len(net.server.packets) - before >= 0.7 * 2000 * 0.5  # full speed at once


def test_adaptive_byte_shares_follow_the_links_capacities(engine: EngineName) -> None:
    links = {1: (3000.0, 0.010), 2: (2000.0, 0.020), 3: (1000.0, 0.030)}
    net = rated_pair(engine, links, balance="adaptive")
    greedy(net, net.client, 2.0)  # ramp up
    before = {pid: p.tx_packets for pid, p in net.client.bond.snapshot().paths.items()}
    delivered_before = len(net.server.packets)
    greedy(net, net.client, 3.0, start=10**6)
    after = net.client.bond.snapshot().paths
    carried = {pid: after[pid].tx_packets - before[pid] for pid in links}
    total = sum(carried.values())
    for pid, (rate, _) in links.items():
        assert carried[pid] / total == pytest.approx(rate / 6000.0, rel=0.1)
    # The bond delivers (nearly) the sum of the links.
    assert len(net.server.packets) - delivered_before >= 0.9 * 6000 * 3.0


def paced(net: SimNet, side: Side, seconds: float, pps: float) -> dict[int, float]:
    """Offer ``pps`` bulk packets per second, evenly, for ``seconds``; when each sent
    packet (by number) reached the other side, for those that did within 1 s more."""
    step = 0.005
    per_step = round(pps * step)
    assert per_step == pps * step, "pps must fill whole 5 ms steps"
    other = net.server if side is net.client else net.client
    sent_at: dict[int, float] = {}
    arrived: dict[int, float] = {}
    seen = len(other.packets)
    number = 0
    end = net.now + seconds
    while net.now < end + 1.0:
        if net.now < end:
            for _ in range(per_step):
                if side.bond.send_packet(udp(0, number, size=PACKET), net.now):
                    sent_at[number] = net.now
                number += 1
        net.run_for(step)
        for packet in other.packets[seen:]:
            arrived[ident(packet)[1]] = net.now - sent_at[ident(packet)[1]]
        seen = len(other.packets)
    assert len(sent_at) == number, "the bond refused packets offered below its capacity"
    assert number >= round(seconds * pps)
    return arrived


def test_a_short_slow_link_is_measured_and_not_overloaded(engine: EngineName) -> None:
    # A 40 ms path on a link carrying 500 packets/s behind a deep (1 s, lossless) buffer,
    # next to an 80 ms one carrying 2000/s, fed 800/s: more than the short link carries,
    # well below the sum, and never enough to make packets wait beyond the window.  The
    # initial window per RTT says the short one carries 1450/s; believing it (the old
    # estimator, which trusted lower samples only when packets waited) keeps a 100 ms
    # queue in its buffer and puts every packet 125 ms late.  Measured, the short link
    # takes its 500/s and the rest goes to the long one on time.
    links = {1: (500.0, 0.02), 2: (2000.0, 0.04)}
    net = rated_pair(engine, links, buffer=1.0, balance="adaptive")
    arrived = paced(net, net.client, 4.0, 800.0)
    assert len(net.server.packets) == len(arrived)  # each packet once
    assert len(arrived) >= round(4.0 * 800.0)  # and every one of them
    short = net.client.bond.snapshot(now=net.now).paths[1]
    assert short.rate_pps == pytest.approx(500.0, rel=0.25)
    assert short.retransmits == 0  # nothing was lost to tell the old estimator
    delays = sorted(arrived[n] for n in arrived if n >= 800)  # after the first second
    p95 = delays[int(0.95 * len(delays))]
    assert p95 < 0.04 + 0.03, f"p95 one-way {p95 * 1000:.0f} ms"


def test_the_receivers_hold_covers_a_repair_on_the_slowest_path(engine: EngineName) -> None:
    # A download over a 20 ms and a 100 ms path: the client only sends ACKs, so its own
    # figures show no loss whatever the server's direction loses.  A gap it sees is a
    # segment KCP is repairing far more often than a dead path: the hold must cover one
    # retransmission on the slowest path (its minimum RTT) on top of the delay spread,
    # or the repaired packets come after the gap was given up and TCP, seeing them out
    # of order, retransmits what was never lost.
    net = rated_pair(engine, {1: (2000.0, 0.01), 2: (2000.0, 0.05)}, balance="adaptive")
    stream(net, net.server, 1.0, pps=500.0)
    receiver = net.client.bond
    spread = (0.1 - 0.02) / 2
    assert receiver.reorder_hold() >= spread + 0.1
    assert receiver.snapshot().reorder.timeout_s >= spread + 0.1


def test_small_packets_take_the_lowest_rtt_path_and_are_not_held(engine: EngineName) -> None:
    links = {1: (2000.0, 0.040), 2: (2000.0, 0.005)}
    net = rated_pair(engine, links, balance="adaptive")
    greedy(net, net.client, 1.0)
    on_fast = net.client.bond.snapshot().paths[2].tx_packets
    arrivals: list[float] = []
    for number in range(20):  # a small packet every 50 ms next to a greedy bulk flow
        ping = udp(7, 10**7 + number, size=60)
        sent_at = net.now
        assert net.client.bond.send_packet(ping, net.now)
        greedy(net, net.client, 0.05, start=10**5 + 100 * number)
        [index] = [i for i, p in enumerate(net.server.packets) if p == ping]
        arrivals.append(net.now - sent_at)
        del net.server.packets[index]
        assert index >= 0
    assert net.client.bond.snapshot().paths[2].tx_packets > on_fast
    reorder = net.server.bond.snapshot().reorder
    assert reorder.passed >= 20  # handed out at once, not behind the bulk's gaps


@pytest.mark.parametrize("balance", ["adaptive", "consistent"])
def test_a_stream_crossing_remove_path_arrives_complete_without_duplicates(
    engine: EngineName, balance: str
) -> None:
    net = rated_pair(engine, {1: (2000.0, 0.02), 2: (2000.0, 0.03)}, balance=balance)
    sent = stream(net, net.client, 1.0)
    net.client.bond.remove_path(1, net.now, "carrier lost")
    sent += stream(net, net.client, 1.0, start=len(sent))
    net.run_for(1.0)
    assert Counter(net.server.packets) == Counter(sent)  # each exactly once
    assert net.client.bond.snapshot().resent > 0 or balance == "adaptive"


@pytest.mark.parametrize("balance", ["adaptive", "consistent"])
def test_a_download_crossing_linkdown_arrives_complete_without_duplicates(
    engine: EngineName, balance: str
) -> None:
    net = rated_pair(engine, {1: (500.0, 0.05), 2: (500.0, 0.05)}, balance=balance)
    sent = [udp(n % 8, n, size=PACKET) for n in range(400)]
    for packet in sent:  # a burst: hundreds queued and in flight on both paths
        assert net.server.bond.send_packet(packet, net.now) or True
    accepted = net.server.bond.snapshot().packets_in
    net.run_for(0.06)
    net.client.bond.remove_path(1, net.now, "carrier lost")  # LINKDOWN to the server
    net.run_for(3.0)
    server = net.server.bond.snapshot()
    assert server.resent > 0  # the server sent path 1's undelivered DATA again
    numbers = [ident(p)[1] for p in net.client.packets]
    assert len(numbers) == len(set(numbers)) == accepted
    assert net.client.bond.snapshot().duplicates >= 0


def test_a_stream_crossing_a_blackhole_arrives_complete_without_duplicates(
    engine: EngineName,
) -> None:
    net = rated_pair(
        engine,
        {1: (2000.0, 0.02), 2: (2000.0, 0.03)},
        balance="adaptive",
        hello_interval=0.5,
        dead_after=2.0,
    )
    sent = stream(net, net.client, 1.0)
    net.blackhole(1)
    sent += stream(net, net.client, 4.0, start=len(sent))
    net.blackhole(1, on=False)
    sent += stream(net, net.client, 1.0, start=len(sent))
    net.run_for(2.0)
    numbers = [ident(p)[1] for p in net.server.packets]
    assert sorted(numbers) == list(range(len(sent)))  # complete, no duplicate
    # Both ends may notice and say LINKDOWN: the second is ignored; nothing else dropped.
    assert set(net.client.bond.snapshot().drops) <= {"linkdown_ignored"}


def test_redundant_first_copy_wins_and_the_copy_is_counted_not_delivered(
    engine: EngineName,
) -> None:
    net = rated_pair(engine, {1: (2000.0, 0.02), 2: (2000.0, 0.03)}, balance="redundant")
    sent = stream(net, net.client, 1.0)
    net.run_for(1.0)
    assert net.server.packets == sent
    client, server = net.client.bond.snapshot(), net.server.bond.snapshot()
    assert client.copies_sent == len(sent)
    assert {pid: p.tx_packets for pid, p in client.paths.items()} == {1: 100, 2: 100}
    assert server.duplicates == len(sent)


def test_duplicate_small_copies_only_small_packets(engine: EngineName) -> None:
    net = rated_pair(
        engine, {1: (2000.0, 0.02), 2: (2000.0, 0.03)}, balance="adaptive", duplicate="small"
    )
    small = [udp(1, n, size=60) for n in range(10)]
    bulk = [udp(2, 100 + n, size=PACKET) for n in range(10)]
    for packet in small + bulk:
        assert net.client.bond.send_packet(packet, net.now)
    net.run_for(1.0)
    assert Counter(net.server.packets) == Counter(small + bulk)
    assert net.client.bond.snapshot().copies_sent == 10
    assert net.server.bond.snapshot().duplicates == 10


def test_a_backup_path_idles_while_a_primary_lives_and_carries_when_none_does(
    engine: EngineName,
) -> None:
    config = BondConfig(kcp_engine=engine, balance="adaptive")
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    net.link(1, delay=0.02, rate=2000.0, buffer=0.05)
    net.link(2, delay=0.005, rate=2000.0, buffer=0.05)  # faster, but a backup
    net.client.bond.add_path(1, 0.0)
    net.client.bond.add_path(2, 0.0, backup=True)
    net.run_for(1.0)
    assert net.client.bond.live_paths() == net.server.bond.live_paths() == [1, 2]
    assert net.server.bond.snapshot().paths[2].backup  # learnt from the HELLO
    up = stream(net, net.client, 0.5)
    down = stream(net, net.server, 0.5)
    for side in (net.client, net.server):
        assert side.bond.snapshot().paths[2].tx_packets == 0
    net.client.bond.remove_path(1, net.now, "carrier lost")
    net.run_for(0.2)
    up += stream(net, net.client, 0.5, start=len(up))
    down += stream(net, net.server, 0.5, start=len(down))
    net.run_for(0.5)
    assert Counter(net.server.packets) == Counter(up)
    assert Counter(net.client.packets) == Counter(down)
    for side in (net.client, net.server):
        assert side.bond.snapshot().paths[2].tx_packets >= 50


def test_a_rate_hint_caps_this_end_and_tells_the_peer_its_receive_rate(
    engine: EngineName,
) -> None:
    config = BondConfig(kcp_engine=engine, balance="adaptive")
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    net.link(1, delay=0.02, rate=4000.0, buffer=0.05)
    hint = LinkRate(send_bps=1000 * 8 * 1400, receive_bps=500 * 8 * 1400)  # segments/s
    net.client.bond.add_path(1, 0.0, rate_hint=hint)
    net.run_for(1.0)
    greedy(net, net.client, 2.0)
    greedy(net, net.server, 2.0)
    client = net.client.bond.snapshot().paths[1]
    server = net.server.bond.snapshot().paths[1]
    assert client.rate_pps == pytest.approx(1000, rel=0.05)  # seeded and capped
    assert server.rate_pps <= 500 * 1.01  # the client's receive rate caps the server
    assert server.tx_rate_bps <= 1.1 * 500 * PACKET * 8


def test_an_idle_bond_wakes_rarely(engine: EngineName) -> None:
    net = rated_pair(engine, {1: (2000.0, 0.01), 2: (2000.0, 0.02), 3: (2000.0, 0.03)})
    wakes = Counter[str]()
    for name, side in (("client", net.client), ("server", net.server)):
        original = side.bond.handle_timer

        def counted(
            now: float, original: Callable[[float], None] = original, name: str = name
        ) -> None:
            wakes[name] += 1
            original(now)

        side.bond.handle_timer = counted  # type: ignore[method-assign]
    net.run_for(10.0)
    for name in ("client", "server"):
        # HELLOs only: one wake per hello interval (2 s) per path, not KCP ticks.
        assert wakes[name] < 1.0 * 10.0 * 3, wakes  # < 1 wake per second per path (brief: 5)
    assert net.client.bond.live_paths() == [1, 2, 3]


def test_consistent_hashing_weights_paths_by_capacity_without_moving_placed_flows(
    engine: EngineName,
) -> None:
    links = {1: (3000.0, 0.01), 2: (1000.0, 0.01)}
    net = rated_pair(engine, links, balance="consistent")
    bond = net.client.bond
    old_flows = list(range(8))
    placed = {flow: bond._consistent.pick(bytes([flow])) for flow in old_flows}
    greedy(net, net.client, 3.0, flows=16)  # both paths measured under load
    capacity = {pid: p.rate_pps for pid, p in bond.snapshot().paths.items()}
    assert capacity[1] > 2 * capacity[2]
    # Flows placed before the weights moved stay where they were ...
    assert {flow: bond._consistent.pick(bytes([flow])) for flow in old_flows} == placed
    # ... new flows share the paths by capacity.
    new_flows = Counter(bond._consistent.pick(b"new-%d" % n) for n in range(4000))
    share = new_flows[1] / 4000
    assert share == pytest.approx(capacity[1] / (capacity[1] + capacity[2]), abs=0.05)


def test_small_packets_are_not_dropped_while_a_bulk_flow_fills_the_queues(
    engine: EngineName,
) -> None:
    net = rated_pair(engine, {1: (1000.0, 0.02), 2: (1000.0, 0.03)}, balance="adaptive")
    greedy(net, net.server, 1.0)
    bond = net.server.bond
    small = []
    bulk = 10**5
    for number in range(50):  # a 50 pps stream of small packets next to a full download
        while bond.send_packet(udp(0, bulk, size=PACKET), net.now):
            bulk += 1  # every queue at its bound: the next bulk packet was refused
        packet = udp(9, 10**7 + number, size=100)
        assert bond.send_packet(packet, net.now)
        small.append(packet)
        greedy(net, net.server, 0.02, start=bulk)
        bulk += 10**4
    net.run_for(1.0)
    assert bond.snapshot().drops.get("queue_full", 0) >= 50
    assert [p for p in net.client.packets if p in set(small)] == small  # all, in order


def test_a_path_gone_silent_drains_onto_the_others_long_before_it_is_declared_dead(
    engine: EngineName,
) -> None:
    net = rated_pair(engine, {1: (2000.0, 0.02), 2: (2000.0, 0.03)}, balance="adaptive",
                     dead_after=10.0)
    sent = stream(net, net.client, 1.0)
    net.blackhole(1)  # the lowest-delay path: it carries the stream
    cut = len(sent)
    sent += stream(net, net.client, 1.0, start=cut)
    arrived = {ident(p)[1] for p in net.server.packets}
    # Within a second of the cut, everything sent up to 0.3 s before now has arrived,
    # though liveness has not given up on path 1 yet (dead_after 10 s): it was hedged.
    assert set(range(len(sent) - 30)) <= arrived
    client = net.client.bond.snapshot()
    assert client.paths[1].state == "up"
    assert client.hedged > 0
    # Path 1 took no new DATA while silent; when it speaks again it carries traffic again.
    on_path_1 = client.paths[1].tx_packets
    net.blackhole(1, on=False)
    sent += stream(net, net.client, 1.0, start=len(sent))
    net.run_for(1.0)
    assert net.client.bond.snapshot().paths[1].tx_packets > on_path_1
    numbers = [ident(p)[1] for p in net.server.packets]
    assert sorted(numbers) == list(range(len(sent)))  # complete, no duplicate delivered


def test_what_was_hedged_is_not_sent_once_more_when_the_path_is_declared_dead(
    engine: EngineName,
) -> None:
    net = rated_pair(engine, {1: (2000.0, 0.02), 2: (2000.0, 0.03)}, balance="adaptive",
                     hello_interval=0.5, dead_after=2.0)
    sent = stream(net, net.client, 1.0)
    net.blackhole(1)
    sent += stream(net, net.client, 3.0, start=len(sent))  # path 1 hedged, then declared dead
    net.run_for(1.0)
    client, server = net.client.bond.snapshot(), net.server.bond.snapshot()
    assert client.paths[1].state != "up"
    assert client.hedged > 0
    assert client.resent == 0  # what was hedged did not go a third time at the death
    # Copies: only the few delivered just before the cut whose ACKs the cut swallowed.
    assert server.duplicates <= 5
    assert sorted(ident(p)[1] for p in net.server.packets) == list(range(len(sent)))


def test_what_a_silent_path_holds_while_every_path_is_silent_still_goes_at_its_death(
    engine: EngineName,
) -> None:
    # Both links go dark: nowhere to hedge to.  Link 1 comes back, link 2 stays dark
    # until liveness gives up on it: what it held must go over link 1 then.
    net = rated_pair(engine, {1: (2000.0, 0.02), 2: (2000.0, 0.03)}, balance="adaptive",
                     hello_interval=0.5, dead_after=2.0)
    sent = stream(net, net.client, 0.5)
    net.blackhole(1)
    net.blackhole(2)
    sent += stream(net, net.client, 1.0, start=len(sent))
    net.blackhole(1, on=False)
    sent += stream(net, net.client, 3.0, start=len(sent))
    net.run_for(2.0)
    assert net.client.bond.snapshot().paths[2].state != "up"
    assert sorted(ident(p)[1] for p in net.server.packets) == list(range(len(sent)))
