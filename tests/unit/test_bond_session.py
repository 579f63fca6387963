"""Two bonds through a simulated network under a fake clock: delivery, scheduling,
liveness, session restarts, backpressure, RTT and hostile input."""

from __future__ import annotations

import importlib.util
import struct
from collections import Counter, defaultdict
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratbond import kcp
from ratbond.bond import (
    Bond,
    BondClosedError,
    BondConfig,
    PathDown,
    PathExistsError,
    PathUp,
    PeerClosed,
    UnknownPathError,
)
from ratbond.bond.config import Balance
from ratbond.bond.path import conv_for
from ratbond.kcp import EngineName
from tests.simnet import Side, SimNet

ENGINES = ["c"] + (["python"] if importlib.util.find_spec("ratbond.kcp.core") else [])


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> EngineName:
    return cast(EngineName, request.param)


def udp(flow: int, number: int, size: int = 60) -> bytes:
    """IPv4/UDP packet of ``flow`` (its source port) carrying ``number``."""
    payload = number.to_bytes(4, "big") + bytes(max(0, size - 32))
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        28 + len(payload),
        0,
        0,
        64,
        17,
        0,
        bytes([10, 0, 0, 1]),
        bytes([10, 0, 0, 2]),
    )
    return header + struct.pack(">HHHH", 1000 + flow, 53, 8 + len(payload), 0) + payload


def ident(packet: bytes) -> tuple[int, int]:
    return struct.unpack_from(">H", packet, 20)[0] - 1000, int.from_bytes(packet[28:32], "big")


def pair(
    engine: EngineName,
    links: dict[int, tuple[float, float, float]],
    *,
    server_config: BondConfig | None = None,
    **options: object,
) -> SimNet:
    """Client and server bonds with paths ``{id: (delay, delay_back, loss)}``, all up."""
    config = BondConfig(kcp_engine=engine, **options)  # type: ignore[arg-type]
    net = SimNet(Bond(config, 0.0), Bond(server_config or config, 0.0))
    for path_id, (delay, delay_back, loss) in links.items():
        net.link(path_id, delay=delay, delay_back=delay_back, loss=loss)
        net.client.bond.add_path(path_id, 0.0)
    net.run_for(1.0)
    assert net.client.bond.live_paths() == sorted(links)
    assert net.server.bond.live_paths() == sorted(links)
    return net


def send(net: SimNet, side: Side, packets: list[bytes], *, batch: int = 20) -> None:
    """Send every packet, pacing batches 2 ms apart and retrying when queues are full."""
    pending = list(reversed(packets))
    while pending:
        for _ in range(batch):
            if not pending:
                break
            if not side.bond.send_packet(pending[-1], net.now):
                break
            pending.pop()
        net.run_for(0.002)


def events_of(side: Side, kind: type) -> list[tuple[float, object]]:
    return [(when, event) for when, event in side.events if isinstance(event, kind)]


def tx_per_path(bond: Bond) -> dict[int, int]:
    return {pid: path.tx_packets for pid, path in bond.snapshot().paths.items()}


def path_of_flow(net: SimNet, flow: int, count: int = 10) -> int:
    """Send ``count`` packets of ``flow`` and return the one path that carried them."""
    before = tx_per_path(net.client.bond)
    send(net, net.client, [udp(flow, n) for n in range(count)])
    after = tx_per_path(net.client.bond)
    used = {pid: after[pid] - before.get(pid, 0) for pid in after}
    used = {pid: count for pid, count in used.items() if count}
    assert list(used.values()) == [count], used
    return next(iter(used))


LOSSY = {1: (0.010, 0.012, 0.03), 2: (0.030, 0.025, 0.03)}


@pytest.mark.parametrize("balance", ["consistent", "roundrobin"])
def test_every_packet_arrives_exactly_once_and_in_flow_order(
    engine: EngineName, balance: str
) -> None:
    net = pair(engine, LOSSY, balance=balance, reorder_timeout=2.0)
    upstream = [udp(n % 8, n) for n in range(1200)]
    downstream = [udp(n % 5, n, size=1200) for n in range(600)]
    send(net, net.server, downstream)
    send(net, net.client, upstream)
    net.run_for(3.0)
    for sent, side in ((upstream, net.server), (downstream, net.client)):
        assert Counter(side.packets) == Counter(sent)
        by_flow: dict[int, list[int]] = defaultdict(list)
        for packet in side.packets:
            flow, number = ident(packet)
            by_flow[flow].append(number)
        assert all(numbers == sorted(numbers) for numbers in by_flow.values())
        if balance == "roundrobin":
            assert side.packets == sent  # the reorder buffer restores global order
    for side in (net.client, net.server):
        # Only refusals by backpressure (retried by send()), never a lost packet.
        assert set(side.bond.snapshot().drops) <= {"queue_full"}


def test_roundrobin_adaptive_reorder_keeps_global_order_over_unequal_paths(
    engine: EngineName,
) -> None:
    net = pair(engine, {1: (0.005, 0.005, 0.0), 2: (0.060, 0.060, 0.0)}, balance="roundrobin")
    packets = [udp(0, n) for n in range(1500)]
    send(net, net.client, packets)
    net.run_for(1.0)
    assert net.server.packets == packets
    snapshot = net.server.bond.snapshot()
    assert snapshot.peer_sprays
    assert snapshot.reorder.released_by_timeout == 0
    assert 0.02 <= snapshot.reorder.timeout_s <= 1.0


def test_consistent_peer_is_not_held_behind_another_paths_gap(engine: EngineName) -> None:
    net = pair(engine, {1: (0.005, 0.005, 0.0), 2: (0.100, 0.100, 0.0)}, balance="consistent")
    flows = {path_of_flow(net, flow): flow for flow in range(12)}
    assert set(flows) == {1, 2}
    net.run_for(1.0)
    net.server.packets.clear()
    slow, fast = udp(flows[2], 999), udp(flows[1], 999)
    assert net.client.bond.send_packet(slow, net.now)
    assert net.client.bond.send_packet(fast, net.now)
    net.run_for(0.05)
    assert net.server.packets == [fast]  # not held behind the slow path's packet
    net.run_for(0.1)
    assert net.server.packets == [fast, slow]
    assert not net.server.bond.snapshot().peer_sprays


def test_consistent_hashing_pins_flows_and_moves_only_the_dead_paths_flows(
    engine: EngineName,
) -> None:
    links = {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0), 3: (0.015, 0.015, 0.0)}
    net = pair(engine, links, balance="consistent")
    before = {flow: path_of_flow(net, flow) for flow in range(24)}
    assert set(before.values()) == {1, 2, 3}
    assert {flow: path_of_flow(net, flow) for flow in range(24)} == before  # sticky
    net.client.bond.remove_path(2, net.now, "wan2 gone")
    net.run_for(0.5)
    after = {flow: path_of_flow(net, flow) for flow in range(24)}
    for flow, path_id in before.items():
        if path_id == 2:
            assert after[flow] in (1, 3)
        else:
            assert after[flow] == path_id
    assert net.server.bond.live_paths() == [1, 3]


def test_roundrobin_spreads_one_flow_over_all_paths(engine: EngineName) -> None:
    links = {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0), 3: (0.04, 0.04, 0.0)}
    net = pair(engine, links, balance="roundrobin")
    packets = [udp(7, n) for n in range(300)]
    send(net, net.client, packets)
    net.run_for(1.0)
    tx = tx_per_path(net.client.bond)
    # Every path carries part of the flow; the shortest one delivers soonest and takes
    # the bulk, the others about a window each while its queue is long.
    assert sum(tx.values()) == 300
    assert tx[1] > tx[2] >= tx[3] > 0
    assert net.server.packets == packets


def test_silent_path_goes_down_exactly_dead_after_after_last_heard(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)})
    net.run_for(3.3)
    net.blackhole(1)
    heard = {  # an idle bond's own clock lags: ask as of the simulation's now
        side: net.now - (side.bond.snapshot(now=net.now).paths[1].last_heard_ago_s or 0.0)
        for side in (net.client, net.server)
    }
    net.run_until(min(heard.values()) + 10.0 - 0.001)
    assert net.client.bond.live_paths() == [1, 2]
    net.run_for(1.0)
    reasons = []
    for side in (net.client, net.server):
        [(when, event)] = events_of(side, PathDown)
        assert isinstance(event, PathDown)
        assert event.path_id == 1
        reasons.append(event.reason)
        if event.reason == "silent":
            assert when == pytest.approx(heard[side] + 10.0)
        else:  # the other end noticed first and said LINKDOWN over path 2
            assert event.reason == "peer reported link down"
        assert side.bond.live_paths() == [2]
    assert "silent" in reasons
    # Traffic keeps flowing over the survivor.
    packets = [udp(flow, 0) for flow in range(10)]
    send(net, net.client, packets)
    net.run_for(0.2)
    assert sorted(net.server.packets) == sorted(packets)


def test_silence_limit_stretches_to_four_round_trips_on_a_slow_path(engine: EngineName) -> None:
    """A 600 ms-RTT path (satellite-like) comes up although HELLOs go every 250 ms, and with
    dead_after=1 s it is declared silent only after 4 RTTs (2.4 s), while a 20 ms path
    keeps the plain 1 s."""
    config = BondConfig(kcp_engine=engine, hello_interval=0.25, dead_after=1.0)
    net = SimNet(Bond(config, 0.0), Bond(config, 0.0))
    for path_id, delay in ((1, 0.3), (2, 0.01)):
        net.link(path_id, delay=delay, delay_back=delay, loss=0.0)
        net.client.bond.add_path(path_id, 0.0)
    net.run_for(5.0)
    assert net.client.bond.live_paths() == [1, 2] == net.server.bond.live_paths()
    for path_id, (low, high) in ((1, (2.3, 2.8)), (2, (1.0, 1.0))):
        net.blackhole(path_id)
        net.run_for(0.35)  # what was already in flight lands
        seen = net.client.bond.snapshot().paths[path_id]
        heard = net.now - (seen.last_heard_ago_s or 0.0)
        limit = max(1.0, 4 * max(seen.hello_rtt_ms or 0, seen.srtt_ms) / 1000.0)
        assert low <= limit <= high
        net.run_until(heard + limit - 0.01)
        assert path_id in net.client.bond.live_paths()
        net.run_for(0.05)
        assert path_id not in net.client.bond.live_paths()
        net.blackhole(path_id, on=False)
        net.run_for(6.0)
        assert net.client.bond.live_paths() == [1, 2]


def test_remove_path_sends_linkdown_over_a_survivor_at_once(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.03, 0.03, 0.0)})
    start = net.now
    net.client.bond.remove_path(1, start, "wan1 carrier lost")
    assert not net.client.bond.has_path(1)
    assert net.client.bond.live_paths() == [2]
    assert events_of(net.client, PathDown) == []  # queued, not yet pumped
    net.run_for(0.1)
    assert events_of(net.client, PathDown) == [(start, PathDown(1, "wan1 carrier lost"))]
    [(when, event)] = events_of(net.server, PathDown)
    assert event == PathDown(1, "peer reported link down")
    assert when == pytest.approx(start + 0.03)  # one trip over path 2
    assert net.server.bond.live_paths() == [2]


@pytest.mark.parametrize("resend", [True, False])
def test_reorder_gaps_of_a_dead_path_are_released_at_once(engine: EngineName, resend: bool) -> None:
    net = pair(
        engine,
        {1: (0.01, 0.01, 0.0), 2: (0.01, 0.01, 0.0)},
        balance="roundrobin",
        reorder_timeout=5.0,
        resend_on_death=resend,
    )
    net.blackhole(1)  # path 1 dies with its packets in flight
    packets = [udp(0, n) for n in range(100)]
    for packet in packets:
        assert net.client.bond.send_packet(packet, net.now)
    # Twin paths take turns (ties rotate), so both carry part of the flow.
    on_1 = tx_per_path(net.client.bond)[1]
    assert 0 < on_1 < 100
    net.run_for(0.02)
    assert net.server.packets == []  # path 2's packets wait behind path 1's
    assert net.server.bond.snapshot().reorder.held == 100 - on_1
    start = net.now
    net.client.bond.remove_path(1, start, "carrier lost")
    net.run_for(0.05)
    [(when, _)] = events_of(net.server, PathDown)
    assert when == pytest.approx(start + 0.01)  # with the LINKDOWN, not after 5 s
    if resend:
        # Path 1's packets went again over path 2, ahead of the LINKDOWN: every packet
        # arrives once and in order, and nothing waits for the timeout.
        assert net.server.packets == packets
        assert net.client.bond.snapshot().resent == on_1
        assert net.server.bond.snapshot().reorder.released_by_timeout == 0
        return
    # Every packet path 2 carried is delivered, in order, without waiting for path 1's.
    delivered = set(net.server.packets)
    assert len(delivered) == 100 - on_1
    assert net.server.packets == [p for p in packets if p in delivered]


def test_close_takes_every_path_down_and_reports_peer_closed(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)})
    net.client.bond.close(net.now)
    assert net.client.bond.get_timer() is None
    assert net.client.bond.live_paths() == []
    assert not net.client.bond.send_packet(udp(0, 0), net.now)
    assert net.client.bond.snapshot().drops == {"closed": 1}
    with pytest.raises(BondClosedError):
        net.client.bond.add_path(3, net.now)
    net.run_for(0.1)
    kinds = [event for _, event in net.server.events if not isinstance(event, PathUp)]
    assert kinds[-1] == PeerClosed()
    assert sorted(kinds[:-1], key=str) == [
        PathDown(1, "peer closed"),
        PathDown(2, "peer closed"),
    ]
    assert net.server.bond.get_timer() is None
    assert net.server.bond.snapshot().closed


def test_removed_path_comes_back_with_a_fresh_session_on_both_ends(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)}, balance="roundrobin")
    net.client.bond.remove_path(1, net.now, "test")
    net.run_for(1.0)
    assert net.server.bond.snapshot().paths[1].waitsnd == 0  # parked: no probes queued
    added = net.now
    net.client.bond.add_path(1, added)
    net.run_for(0.5)
    # The client is up after one round trip (the server's echo), the server half one later.
    for side, delay in ((net.client, 0.02), (net.server, 0.03)):
        when, event = events_of(side, PathUp)[-1]
        assert event == PathUp(1)
        assert when == pytest.approx(added + delay)
    client_path = net.client.bond.snapshot().paths[1]
    server_path = net.server.bond.snapshot().paths[1]
    assert client_path.state == server_path.state == "up"
    assert client_path.epoch == server_path.epoch == 2
    packets = [udp(0, n) for n in range(100)]
    send(net, net.client, packets)
    send(net, net.server, packets)
    net.run_for(0.5)
    assert net.server.packets == packets
    assert net.client.packets == packets
    # Both paths carry the flow, the shorter one (1) at least half of it.
    assert 50 <= net.client.bond.snapshot().paths[1].tx_packets < 100


def test_blackholed_path_rejoins_after_the_outage_with_agreeing_sessions(
    engine: EngineName,
) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)}, balance="roundrobin")
    net.blackhole(1)
    net.run_for(30.0)
    assert net.client.bond.live_paths() == net.server.bond.live_paths() == [2]
    restarts = net.client.bond.snapshot().paths[1].restarts
    assert restarts >= 5  # unanswered probes restart instead of queueing behind old ones
    net.blackhole(1, on=False)
    net.run_for(2.5)  # one HELLO interval plus a round trip
    assert net.client.bond.live_paths() == net.server.bond.live_paths() == [1, 2]
    client_path = net.client.bond.snapshot().paths[1]
    assert client_path.epoch == net.server.bond.snapshot().paths[1].epoch
    assert client_path.waitsnd < 4  # no backlog of stale probes
    packets = [udp(0, n) for n in range(200)]
    send(net, net.client, packets)
    net.run_for(0.5)
    assert net.server.packets == packets


def test_datagrams_of_an_old_session_are_dropped_as_stale(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)})
    for flow in range(8):  # several flows, so that some of them hash onto path 1
        net.client.bond.send_packet(udp(flow, 0), net.now)
    old = [data for pid, data in net.client.bond.datagrams_to_send() if pid == 1]
    net.client.bond.remove_path(1, net.now, "test")
    net.client.bond.add_path(1, net.now)
    net.run_for(0.5)
    assert net.server.bond.snapshot().paths[1].epoch == 2
    for data in old:
        net.server.bond.receive(1, data, net.now)
    assert net.server.bond.snapshot().drops.get("stale_session", 0) == len(old) >= 1
    assert net.server.bond.live_paths() == [1, 2]


def test_one_way_loss_is_caught_by_kcp_dead_link(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)}, kcp_dead_link=4)
    net.direction(1, from_client=True).blackhole = True
    start = net.now
    send(net, net.client, [udp(flow, 0) for flow in range(20)])
    net.run_for(3.0)
    [(when, event)] = events_of(net.client, PathDown)
    assert event == PathDown(1, "kcp dead link")
    assert when - start < 3.0


def test_stuck_send_direction_is_caught_by_unechoed_hellos(engine: EngineName) -> None:
    patient = BondConfig(kcp_engine=engine, dead_after=60.0)
    net = pair(
        engine,
        {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)},
        server_config=patient,
        kcp_dead_link=1000,
    )
    net.direction(1, from_client=True).blackhole = True
    start = net.now
    net.run_for(15.0)
    [(when, event)] = events_of(net.client, PathDown)
    assert event == PathDown(1, "send stalled")
    assert 10.0 - 2.0 <= when - start <= 10.0 + 2.0 + 0.1


def test_hello_rtt_is_right_under_asymmetric_delays(engine: EngineName) -> None:
    net = pair(engine, {1: (0.030, 0.070, 0.0), 2: (0.005, 0.015, 0.0)})
    net.run_for(4.5)
    for bond in (net.client.bond, net.server.bond):
        paths = bond.snapshot().paths
        assert paths[1].hello_rtt_ms == 100
        assert paths[2].hello_rtt_ms == 20
        assert 90 <= paths[1].srtt_ms <= 115
        assert 15 <= paths[2].srtt_ms <= 30


def test_backpressure_when_every_queue_is_full_and_relief_after_acks(engine: EngineName) -> None:
    net = pair(
        engine,
        {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)},
        balance="roundrobin",
        snd_wnd=16,
        reorder_timeout=5.0,
    )
    net.blackhole(1)
    net.blackhole(2)
    bond = net.client.bond
    accepted = []
    for n in range(200):
        packet = udp(0, n)
        if bond.send_packet(packet, net.now):
            accepted.append(packet)
    assert len(accepted) == 2 * 32  # two windows per path
    assert not bond.can_send()
    assert bond.snapshot().drops == {"queue_full": 200 - 64}
    net.run_for(0.5)
    net.blackhole(1, on=False)
    net.blackhole(2, on=False)
    net.run_for(3.0)
    assert bond.can_send()
    assert net.server.packets == accepted


def test_slow_path_queue_is_bounded_in_time_and_roundrobin_favours_the_fast_one(
    engine: EngineName,
) -> None:
    net = pair(
        engine,
        {1: (0.01, 0.01, 0.0), 2: (0.01, 0.01, 0.0)},
        balance="roundrobin",
        reorder_timeout=10.0,
    )
    net.link(1, delay=0.01, rate=4000.0)  # datagrams/s, queued without limit
    net.link(2, delay=0.01, rate=400.0)
    bond = net.client.bond
    packets = [udp(0, n, size=1000) for n in range(3000)]
    send(net, net.client, packets, batch=40)  # offered faster than both links together
    slow = bond.snapshot().paths[2]
    assert 0 < slow.rate_pps <= 450
    # A fixed bound would queue 2048 segments (5 s) on the slow link; KCP's spurious
    # retransmissions into that queue would stall the path outright.
    assert slow.queue_limit <= 200
    assert slow.srtt_ms < 1500
    tx = tx_per_path(bond)
    assert tx[1] > 6 * tx[2]  # the fast link takes the bulk
    net.run_for(5.0)
    assert net.server.packets == packets
    assert events_of(net.client, PathDown) == []


def test_consistent_flow_on_a_full_path_is_dropped_while_others_flow(engine: EngineName) -> None:
    net = pair(engine, {1: (0.01, 0.01, 0.0), 2: (0.02, 0.02, 0.0)}, snd_wnd=8,
               balance="consistent")
    flows = {path_of_flow(net, flow, 1): flow for flow in range(12)}
    net.run_for(0.5)  # everything acknowledged
    net.blackhole(1)
    bond = net.client.bond
    sent = [bond.send_packet(udp(flows[1], n), net.now) for n in range(40)]
    assert sent.count(True) == 16
    assert bond.can_send()  # path 2 still has room
    assert bond.send_packet(udp(flows[2], 0), net.now)
    assert bond.snapshot().drops == {"queue_full": 24}


def test_no_path_means_no_send_and_a_counted_drop(engine: EngineName) -> None:
    balances: tuple[Balance, ...] = ("consistent", "roundrobin")
    for balance in balances:
        bond = Bond(BondConfig(kcp_engine=engine, balance=balance), 0.0)
        assert not bond.can_send()
        assert not bond.send_packet(udp(0, 0), 0.0)
        bond.add_path(1, 0.0)  # added but not yet up
        assert not bond.send_packet(udp(0, 0), 0.0)
        assert bond.snapshot().drops == {"no_path": 2}


def test_hello_timer_is_exact_and_goes_on_idle_paths(engine: EngineName) -> None:
    bond = Bond(BondConfig(kcp_engine=engine), 5.0)
    bond.add_path(4, 5.0)
    first = bond.datagrams_to_send()
    assert [pid for pid, _ in first] == [4]  # HELLO at once
    now = 5.0
    while now < 6.99:  # only KCP retransmissions of the one HELLO (sn 0) until then
        now = min(bond.get_timer() or 7.0, 6.99)
        bond.handle_timer(now)
        for pid, datagram in bond.datagrams_to_send():
            assert pid == 4
            assert datagram[:4] == conv_for(1, 4).to_bytes(4, "little")
            assert datagram[12:16] == bytes(4)  # sn 0
    assert bond.get_timer() == 7.0
    bond.handle_timer(7.0)
    # The unanswered probe restarts the session: fresh conv, fresh HELLO.
    [(pid, datagram)] = bond.datagrams_to_send()
    assert pid == 4
    assert int.from_bytes(datagram[:4], "little") == conv_for(2, 4)
    assert datagram[4] == 81  # a KCP PUSH
    assert datagram[24] == 2  # carrying a HELLO


def test_api_misuse_raises_typed_errors(engine: EngineName) -> None:
    bond = Bond(BondConfig(kcp_engine=engine), 0.0)
    bond.add_path(1, 0.0)
    with pytest.raises(PathExistsError):
        bond.add_path(1, 0.0)
    with pytest.raises(UnknownPathError):
        bond.remove_path(9, 0.0, "x")
    with pytest.raises(ValueError, match="path_id"):
        bond.add_path(70000, 0.0)
    with pytest.raises(UnknownPathError):
        bond.set_path_weight(9, 1.0)
    with pytest.raises(ValueError, match="weight"):
        bond.set_path_weight(1, 0.0)


class FakePeer:
    """A bare KCP session speaking for path ``path_id`` of a peer, to send anything."""

    def __init__(self, engine: EngineName, path_id: int, epoch: int = 1) -> None:
        self.out: list[bytes] = []
        self.kcp = kcp.create(conv_for(epoch, path_id), self.out.append, engine)
        self.kcp.nodelay(1, 10, 2, 1)
        self.kcp.update(0)

    def datagrams(self, *messages: bytes) -> list[bytes]:
        for message in messages:
            assert self.kcp.send(message) >= 0
        self.kcp.flush()
        out, self.out = self.out, []
        return out


def test_malformed_bond_messages_are_counted_never_raised(engine: EngineName) -> None:
    bond = Bond(BondConfig(kcp_engine=engine), 0.0)
    bond.add_path(1, 0.0)
    peer = FakePeer(engine, 1)
    bad = [b"\x01", b"\x01\x00\x00\x00\x01", b"\x02short", b"\x03\x00", b"\x09junk", b"\x00"]
    for datagram in peer.datagrams(*bad):
        bond.receive(1, datagram, 0.01)
    drops = bond.snapshot().drops
    assert drops == {
        "short_data": 2,
        "short_hello": 1,
        "short_linkdown": 1,
        "unknown_message_type": 2,
    }
    assert bond.live_paths() == []  # no HELLO echo, no DATA: not proven two-way
    assert bond.packets_received() == []


def test_linkdown_for_unknown_or_newer_sessions_is_ignored(engine: EngineName) -> None:
    bond = Bond(BondConfig(kcp_engine=engine), 0.0)
    bond.add_path(1, 0.0)
    bond.add_path(2, 0.0)
    peer = FakePeer(engine, 1)
    linkdowns = [b"\x03\x00\x07\x00\x01", b"\x03\x00\x02\x00\x01"]  # unknown 7; 2 not up
    for datagram in peer.datagrams(*linkdowns):
        bond.receive(1, datagram, 0.01)
    assert bond.snapshot().drops == {"linkdown_ignored": 2}


def test_bad_datagrams_are_counted_by_reason(engine: EngineName) -> None:
    bond = Bond(BondConfig(kcp_engine=engine), 0.0)
    bond.add_path(1, 0.0)
    bond.receive(2, bytes(30), 0.0)
    bond.receive(1, bytes(10), 0.0)
    bond.receive(1, conv_for(1, 3).to_bytes(4, "little") + bytes(24), 0.0)
    bond.receive(1, conv_for(1, 1).to_bytes(4, "little") + b"\x99" + bytes(23), 0.0)
    assert bond.snapshot().drops == {
        "unknown_path": 1,
        "short_datagram": 1,
        "wrong_path": 1,
        "kcp_rejected": 1,
    }
    assert bond.live_paths() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), max_size=8))
def test_arbitrary_datagrams_never_raise(datagrams: list[bytes]) -> None:
    bond = Bond(BondConfig(kcp_engine="c"), 0.0)
    bond.add_path(1, 0.0)
    conv = conv_for(1, 1).to_bytes(4, "little")
    for index, data in enumerate(datagrams):
        bond.receive(1, conv + data if index % 2 else data, 0.001 * index)
    bond.handle_timer(1.0)
    bond.datagrams_to_send()
    bond.packets_received()
    assert sum(bond.snapshot().drops.values()) <= len(datagrams) + 64


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=120), max_size=10), st.sampled_from(["consistent", "roundrobin"])
)
def test_arbitrary_packets_from_the_tun_never_raise(packets: list[bytes], balance: Balance) -> None:
    net = SimNet(Bond(BondConfig(kcp_engine="c", balance=balance), 0.0), Bond(BondConfig(), 0.0))
    net.client.bond.add_path(1, 0.0)
    net.run_for(0.1)
    accepted = [packet for packet in packets if net.client.bond.send_packet(packet, net.now)]
    net.run_for(0.1)
    assert net.server.packets == accepted
    assert all(accepted)
    assert net.client.bond.snapshot().drops.get("empty_packet", 0) == packets.count(b"")
