"""Logging under attack, at the connection level: a million bad datagrams at each end.

A router's log is read by a person; a flood of junk must not bury it nor fill the disk.
The cores do no logging of their own: the shells write one line per connection event (a
refused handshake through a 10 s rate limit). So the bound is checked on the events: while
an established pair keeps exchanging real traffic, 1,000,000 bad datagrams -- junk, a wrong
version, forged DATA carrying the live session id, truncated real datagrams, replays,
garbage handshakes -- reach each end over 20 simulated seconds. Every one is dropped and
counted, the session and its paths are untouched, and the events the shells would log
stay a handful. ``tests/e2e/test_log_flood.py`` counts real log lines through real sockets.
"""

from __future__ import annotations

import logging
import random
import struct
from collections.abc import Sequence

import pytest

from ratbond.connection import (
    ConnectionEvent,
    HandshakeRefused,
    PathDown,
    PathMoved,
    SessionEnded,
    TunnelDown,
)
from ratbond.logs import RateLimitedLog
from ratbond.wire import HEADER, SECURE_INIT_SIZE, MsgType
from tests.connsim import ConnPair
from tests.unit.test_connection import connected, udp

FLOOD = 1_000_000
CHUNKS = 200              # the flood is spread over CHUNKS slices of ...
SLICE_S = 0.1             # ... this much simulated time: 50,000 bad datagrams/s
MAX_LOG_LINES = 36        # "a few dozen"


def real_datagram(pair: ConnPair, from_client: bool) -> bytes:
    """One authentic DATA datagram of the live session, as the attacker captured it on
    the wire: the original reaches its end first, every copy after it is a replay."""
    if from_client:
        pair.client.send_packet(udp(7), pair.now)
        path_id, datagram = pair.client.datagrams_to_send(pair.now)[0]
        pair.server.receive_datagram(datagram, pair.links[path_id].address, pair.now)
    else:
        pair.server.send_packet(udp(7), pair.now)
        datagram, _addr = pair.server.datagrams_to_send(pair.now)[0]
        pair.client.receive_datagram(datagram, pair.now)
    return datagram


def bad_datagrams(captured: bytes, rng: random.Random, count: int) -> list[bytes]:
    """``count`` datagrams, in rotation: junk, wrong version, forged DATA for the live
    session, truncated real ones, replays of a real one, garbage handshake initiations."""
    version, _type, path_id, session, counter = HEADER.unpack_from(captured)
    out = []
    for k in range(count):
        kind = k % 6
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 1500))
        elif kind == 1:
            data = HEADER.pack(version + 1 + rng.randrange(254), MsgType.DATA, path_id,
                               session, counter + k) + rng.randbytes(64)
        elif kind == 2:
            data = HEADER.pack(version, MsgType.DATA, path_id, session,
                               counter + 1 + k) + rng.randbytes(rng.randrange(16, 1400))
        elif kind == 3:
            data = captured[:rng.randrange(0, len(captured))]
        elif kind == 4:
            data = captured
        else:
            data = HEADER.pack(version, MsgType.HANDSHAKE_INIT, path_id, 0, 0) + rng.randbytes(
                SECURE_INIT_SIZE - HEADER.size)
        out.append(data)
    return out


def log_lines(events: Sequence[tuple[float, ConnectionEvent]]) -> int:
    """Lines the shells would write for these events: one each, refused handshakes
    through the shells' own rate limit (fake clock: the flood lasts 20 s)."""
    logger = logging.getLogger("ratbond.test.flood")
    clock = [0.0]
    limited = RateLimitedLog(logger, clock=lambda: clock[0])
    lines = 0
    for when, event in events:
        clock[0] = when
        if isinstance(event, HandshakeRefused):
            lines += limited.log(logging.WARNING, "refused", "refused")
        else:
            lines += 1
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("target", ["server", "client"])
def test_a_million_bad_datagrams_are_counted_and_barely_logged(target: str) -> None:
    pair = connected(0.01, 0.02)
    session = pair.client.session
    rng = random.Random(15)
    captured = real_datagram(pair, from_client=(target == "server"))
    pair.pump()  # the original's packet reaches the TUN before the flood starts
    end = pair.server if target == "server" else pair.client
    out = pair.server_out if target == "server" else pair.client_out
    drops_before = end.channel_stats.total
    events_before = len(out.events)
    delivered_before = len(pair.server_out.packets) + len(pair.client_out.packets)
    per_chunk = FLOOD // CHUNKS
    for chunk in range(CHUNKS):
        flood = bad_datagrams(captured, rng, per_chunk)
        start = pair.now
        for k, data in enumerate(flood):
            now = start + SLICE_S * k / per_chunk
            if target == "server":
                pair.server.receive_datagram(data, (f"203.0.113.{k % 250 + 1}", 1024 + chunk),
                                             now)
            else:
                pair.client.receive_datagram(data, now)
        pair.run_for(SLICE_S)  # the real exchange goes on: hellos, acks
    dropped = end.channel_stats.total - drops_before
    events = out.events[events_before:]
    kinds = sorted({type(e).__name__ for _, e in events})
    # Every bad datagram was dropped and counted once.
    assert dropped == FLOOD, end.channel_stats.as_dict()
    assert not [e for _, e in events
                if isinstance(e, (PathDown, PathMoved, SessionEnded, TunnelDown))], kinds
    assert pair.client.session == session and pair.client.tunnel_up
    assert log_lines(events) <= MAX_LOG_LINES, kinds
    # Nothing forged or replayed reached a TUN.
    delivered = len(pair.server_out.packets) + len(pair.client_out.packets) - delivered_before
    assert delivered == 0
    # ... and the tunnel still carries traffic both ways.
    pair.client.send_packet(udp(99), pair.now)
    pair.server.send_packet(udp(98), pair.now)
    assert pair.run_until(lambda: any(p[28:32] == (99).to_bytes(4, "big")
                                      for p in pair.server_out.packets)
                          and any(p[28:32] == (98).to_bytes(4, "big")
                                  for p in pair.client_out.packets), pair.now + 5)


def test_bad_datagrams_cover_every_kind() -> None:
    """The generator's rotation really produces each kind (a guard for the test above)."""
    captured = HEADER.pack(1, MsgType.DATA, 1, 0xABCD, 5) + bytes(60)
    flood = bad_datagrams(captured, random.Random(1), 12)
    versions = {d[0] for d in flood if len(d) >= HEADER.size}
    assert any(v != 1 for v in versions) and 1 in versions
    assert flood[4] == captured == flood[10]
    assert len(flood[3]) < len(captured)
    assert struct.unpack_from("!I", flood[2], 4)[0] == 0xABCD
    assert len(flood[5]) == SECURE_INIT_SIZE
