"""Resource bounds under bad peers: memory and time, on the sans-I/O cores (fake clock).

A peer that holds the secret but misbehaves -- a broken build, a compromised router, or
anyone at all in plaintext mode -- must not make an end grow without bound or stall
forever. Each test plays one such peer and asserts the size bound and the time bound:

* a peer that never acks: the send queues stay capped and its paths go down by the
  stall rule within ``dead_after`` (it kept them up forever before: fixed in
  ``bond/path.py``);
* maximum-size messages: a datagram larger than the KCP MTU is refused (before, the
  receive window could hold ``rcv_wnd`` segments of 64 KiB each: fixed in ``bond/bond.py``),
  the window bounds what a peer can park, and a fragment run that never ends is
  returned, not a crash (it raised ``IndexError`` out of ``KCP.recv``: fixed in
  ``kcp/core.py``);
* a reorder buffer held open by a missing sequence number: bounded in packets, bytes,
  bookkeeping (its arrival records grew one per packet: fixed in ``bond/reorder.py``)
  and time;
* many half-open handshakes: the server's pending table and client table stay capped
  and empty themselves after ``pending_timeout``;
* a huge window announcement: in flight stays at our own send window.
"""

from __future__ import annotations

import math
import struct
from typing import cast

import pytest

from ratbond.bond import Bond, BondConfig
from ratbond.bond.path import conv_for
from ratbond.bond.reorder import ReorderBuffer
from ratbond.connection import ClientConnection, PathDown, ServerConnection
from ratbond.crypto import Limits
from ratbond.kcp import EngineName, c_engine_available, create
from ratbond.kcp.core import CMD_ACK, CMD_PUSH, KCP
from ratbond.wire import MsgType
from tests.connsim import WALL_EPOCH, config, seeded
from tests.unit.test_connection import connected, udp

ENGINES: list[EngineName] = ["python", "c"] if c_engine_available() else ["python"]
SEGMENT = struct.Struct("<IBBHIIII")  # conv, cmd, frg, wnd, ts, sn, una, len


def segment(conv: int, sn: int, payload: bytes = b"x" * 100, *, frg: int = 0,
            cmd: int = CMD_PUSH, wnd: int = 128, una: int = 0) -> bytes:
    return SEGMENT.pack(conv, cmd, frg, wnd, 0, sn, una, len(payload)) + payload


# ----- KCP: fragments, windows --------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fragment_run_that_never_ends_is_returned_not_raised(engine: EngineName) -> None:
    """Regression: six fragments all numbered 5 (no fragment 0) made the pure engine pop an
    empty queue; now both engines hand out the run as one message, as ikcp does."""
    kcp = create(7, lambda _data: None, engine)
    kcp.update(0)
    for sn in range(6):
        assert kcp.input(segment(7, sn, b"abc", frg=5)) == 0
    assert kcp.recv() == b"abc" * 6
    assert kcp.recv() is None


def test_the_receive_window_bounds_what_a_peer_can_park() -> None:
    """A missing first segment and thousands after it: only ``rcv_wnd`` are kept."""
    kcp = KCP(7, lambda _data: None)
    kcp.wndsize(32, 1024)
    kcp.update(0)
    payload = b"y" * kcp.mss
    for sn in range(1, 5001):
        kcp.input(segment(7, sn, payload))
    held = kcp._rcv_buf
    assert len(held) <= kcp.rcv_wnd and len(kcp._rcv_queue) == 0
    assert sum(len(p) for _, p in held.values()) <= kcp.rcv_wnd * kcp.mss
    # The missing segment arrives: the window drains in order, nothing was corrupted.
    kcp.input(segment(7, 0, payload))
    got = []
    while (message := kcp.recv()) is not None:
        got.append(message)
    assert len(got) == kcp.rcv_wnd and all(m == payload for m in got)


def test_a_maximum_size_message_never_complete_holds_at_most_one_window() -> None:
    """Fragments of a 255-fragment message, more than a window can reassemble: the ready
    queue fills to the window, the out-of-order buffer to one more, and no message is
    invented (ikcp's bound: two windows of segments of at most one MTU each)."""
    kcp = KCP(7, lambda _data: None)
    kcp.update(0)
    for sn in range(300):
        kcp.input(segment(7, sn, b"z" * kcp.mss, frg=254 - sn if sn < 255 else 0))
    assert kcp.recv() is None
    assert len(kcp._rcv_queue) <= kcp.rcv_wnd and len(kcp._rcv_buf) <= kcp.rcv_wnd


@pytest.mark.parametrize("engine", ENGINES)
def test_a_huge_window_announcement_keeps_in_flight_at_our_window(engine: EngineName) -> None:
    sent: list[bytes] = []
    kcp = create(7, sent.append, engine)
    kcp.wndsize(32, 128)
    kcp.update(0)
    for n in range(2000):
        kcp.send(n.to_bytes(4, "big") * 50)
    for now in range(0, 5000, 10):  # acks of nothing, announcing 65535 free segments
        kcp.input(segment(7, 0, b"", cmd=CMD_ACK, wnd=65535))
        kcp.update(now)
        assert kcp.inflight <= 32
    waiting = kcp.waitsnd() if callable(kcp.waitsnd) else kcp.waitsnd
    assert waiting > 32  # the rest waits in our queue, not in flight


def test_a_datagram_larger_than_the_kcp_mtu_is_refused() -> None:
    """Regression: the bond handed any authenticated datagram to KCP, so a peer could park
    ``rcv_wnd`` (1024) segments of 60 KiB on every path: 60 MiB each."""
    cfg = BondConfig(kcp_engine="python", hello_interval=0.5, dead_after=2.0)
    bond = Bond(cfg, 0.0)
    bond.add_path(1, 0.0)
    conv = conv_for(1, 1)
    before = bond.snapshot(now=0.0).drops.get("kcp_rejected", 0)
    for sn in range(1, 2001):
        bond.receive(1, segment(conv, sn, b"w" * 60_000), 0.001 * sn)
    snap = bond.snapshot(now=2.0)
    assert snap.drops.get("kcp_rejected", 0) - before == 2000
    engine = cast(KCP, bond._paths[1].kcp)
    assert not engine._rcv_buf and not engine._rcv_queue
    # A datagram of legal size on the same path still goes in.
    bond.receive(1, segment(conv, 1, b"w" * 100), 2.1)
    assert len(engine._rcv_buf) == 1


# ----- a peer that never acks -----------------------------------------------------------------


def test_a_peer_that_never_acks_is_bounded_in_memory_and_time() -> None:
    """The client keeps talking but hears nothing, so it acks nothing: the server's queues
    stay capped, and its paths go down by the stall rule within ``dead_after`` -- before
    the fix the client's per-tick session restarts kept one of them up for good."""
    pair = connected(0.01, 0.02)
    pair.client.receive_datagram = lambda _data, _now: None  # type: ignore[method-assign,assignment]
    server = pair.server
    session = server.active
    assert session is not None
    deaf_at = pair.now
    cap = session.bond.snapshot(now=pair.now).paths[1].queue_limit
    most = 0
    while pair.now < deaf_at + 20:
        for k in range(50):
            server.send_packet(udp(k, sport=1000 + k % 7, size=1200), pair.now)
        pair.run_for(0.05)
        active = server.active
        if active is not None:
            snap = active.bond.snapshot(now=pair.now)
            most = max([most] + [p.waitsnd for p in snap.paths.values()])
    downs = [t - deaf_at for t, e in pair.server_out.events
             if isinstance(e, PathDown) and t >= deaf_at]
    assert len(downs) >= 2 and max(downs[:2]) <= 2.0 + 0.6, downs  # dead_after + a tick
    assert most <= max(cap * 4, 2 * 1024), most  # ``queue_limit`` is dynamic; 2 windows cap
    active = server.active
    if active is not None:
        assert active.bond.live_paths() == []


# ----- the reorder buffer -----------------------------------------------------------------------


def test_a_missing_sequence_number_holds_at_most_the_window_and_the_bytes() -> None:
    out: list[bytes] = []
    buf = ReorderBuffer(out.append, max_packets=4096, max_bytes=4 << 20, timeout=0.1)
    capacity = 4096
    now = 0.0
    for seq in range(1, 100_001):  # seq 0 never comes
        buf.push(seq, b"p" * 1200, now)
        now += 1e-5
        if seq % 997 == 0:
            stats = buf.stats()
            assert stats.held <= capacity and stats.held_bytes <= 4 << 20
            assert len(buf._arrivals) <= 2 * capacity + 1
            assert len(buf._skipped) <= 4 * capacity
    # Everything beyond the held window went out (late but not lost).
    assert len(out) + buf.stats().held == 100_000


def test_arrival_records_stay_bounded_when_no_one_asks_for_the_deadline() -> None:
    """Regression: every other seq missing and the window moving by its bound alone; the
    arrival records grew by one per packet (200,000 here) until deadline() was called."""
    buf = ReorderBuffer(lambda _p: None, max_packets=4096, max_bytes=64 << 20, timeout=0.1)
    for seq in range(1, 400_000, 2):
        buf.push(seq, b"q" * 100, seq * 1e-6)
    assert len(buf._arrivals) <= 2 * 4096 + 1


def test_a_missing_sequence_number_holds_packets_at_most_the_timeout() -> None:
    out: list[bytes] = []
    buf = ReorderBuffer(out.append, timeout=0.1)
    for seq in range(1, 51):
        buf.push(seq, bytes([seq]), 1.0)
    deadline = buf.deadline()
    assert deadline is not None and math.isclose(deadline, 1.1)
    buf.expire(1.0999)
    assert out == []
    buf.expire(deadline)
    assert len(out) == 50 and buf.stats().held == 0 and buf.deadline() is None
    buf.push(0, b"late", 2.0)  # the missing one, late: goes out rather than being lost
    assert out[-1] == b"late"


# ----- half-open handshakes ------------------------------------------------------------------


def test_half_open_handshakes_are_capped_and_expire() -> None:
    """200 clients with the secret start handshakes (answering cookie replies, so load does
    not stop them) and never confirm: the server's pending table and client table stay at
    their limits, and are empty once ``pending_timeout`` passed."""
    limits = Limits(max_pending=32, max_clients=64, pending_timeout=10.0,
                    handshake_rate=1000.0, handshake_burst=1000.0)
    server = ServerConnection(config(limits=limits), now=0.0, wall_offset=WALL_EPOCH,
                              random=seeded(2))
    clients = []
    for i in range(200):
        client = ClientConnection(config(limits=limits), now=0.0, wall_offset=WALL_EPOCH,
                                  client_id=f"c{i:07d}".encode(), random=seeded(100 + i))
        client.add_path(1, 0.0)
        client.connect(0.0)
        clients.append(client)
    channel = server._channel
    largest = 0
    now = 0.0
    while now < 5.0:
        for i, client in enumerate(clients):
            timer = client.get_timer()
            if timer is not None and timer <= now:
                client.handle_timer(now)
            for _path, datagram in client.datagrams_to_send(now):
                server.receive_datagram(datagram, (f"10.9.{i // 250}.{i % 250 + 1}", 5000), now)
        for datagram, addr in server.datagrams_to_send(now):
            if datagram[1] == MsgType.COOKIE_REPLY:
                host = addr[0].split(".")
                clients[int(host[2]) * 250 + int(host[3]) - 1].receive_datagram(datagram, now)
        timer = server.get_timer()
        if timer is not None and timer <= now:
            server.handle_timer(now)
        largest = max(largest, len(channel._pending))
        assert len(channel._clients) <= 64
        now += 0.05
    assert 0 < largest <= 32
    assert server.active is None  # nobody confirmed, nobody owns the tunnel
    server.handle_timer(now + limits.pending_timeout + 0.1)
    assert len(channel._pending) == 0
