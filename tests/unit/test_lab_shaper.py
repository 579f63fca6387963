"""The emulator's per-direction model under a hand-stepped clock (no root, no sockets)."""

from __future__ import annotations

import random

import pytest

from ratbond.lab.emulator import ControlError, parse_params
from ratbond.lab.probe import checksum, echo_request, parse_reply
from ratbond.lab.shaper import ETHERNET_HEADER, Direction, DirectionParams

FRAME = bytes(ETHERNET_HEADER + 1250)  # 1250 IP bytes = 10 000 bits


def test_serialization_and_delay() -> None:
    d = Direction(DirectionParams(rate_mbit=10.0, delay_ms=20.0))
    assert d.offer(FRAME, now=0.0)
    assert d.offer(FRAME, now=0.0)
    # 10 000 bits at 10 Mbit/s = 1 ms each, then 20 ms on the wire.
    assert d.next_due() == pytest.approx(0.021)
    assert d.pop_due(0.0209) == []
    assert d.pop_due(0.021) == [FRAME]
    assert d.next_due() == pytest.approx(0.022)
    assert d.pop_due(1.0) == [FRAME]
    assert d.counters.passed == 2 and d.counters.passed_bytes == 2 * len(FRAME)


def test_queue_is_bounded_in_ms_and_tail_drops() -> None:
    d = Direction(DirectionParams(rate_mbit=10.0, queue_ms=5.0))
    accepted = [d.offer(FRAME, now=0.0) for _ in range(10)]
    # The first frame serializes at once; a frame joins the queue only while its wait plus
    # its own serialization (1 ms each) fits in 5 ms: four more.
    assert accepted == [True] * 5 + [False] * 5
    assert d.counters.tail_dropped == 5
    # Once the backlog drained, frames are accepted again.
    assert d.offer(FRAME, now=0.006)


def test_unlimited_rate_has_no_queue() -> None:
    d = Direction(DirectionParams(rate_mbit=None, delay_ms=1.0))
    assert all(d.offer(FRAME, now=0.0) for _ in range(1000))
    assert len(d.pop_due(0.001)) == 1000


def test_jitter_never_reorders() -> None:
    d = Direction(DirectionParams(delay_ms=20.0, jitter_ms=15.0), random.Random(7))
    frames = [i.to_bytes(2, "big") + bytes(100) for i in range(500)]
    for k, frame in enumerate(frames):
        d.offer(frame, now=k * 0.0005)
    departures: list[tuple[int, float]] = []
    while (t := d.next_due()) is not None:
        departures += [(int.from_bytes(f[:2], "big"), t) for f in d.pop_due(t)]
    assert [k for k, _ in departures] == list(range(500))  # FIFO order kept
    assert [t for _, t in departures] == sorted(t for _, t in departures)
    spread = [t - k * 0.0005 for k, t in departures]
    assert min(spread) >= 0.005 - 1e-9 and max(spread) <= 0.035 + 1e-9
    assert max(spread) - min(spread) > 0.01  # the jitter really varies the delay


def test_loss_is_random_at_the_given_rate() -> None:
    d = Direction(DirectionParams(loss=0.1), random.Random(1))
    for _ in range(10_000):
        d.offer(FRAME, now=0.0)
    assert 900 < d.counters.lost < 1100
    assert d.in_flight == 10_000 - d.counters.lost


def test_blackhole_cuts_frames_in_flight_and_new_ones() -> None:
    d = Direction(DirectionParams(delay_ms=10.0))
    d.offer(FRAME, now=0.0)
    d.configure(DirectionParams(delay_ms=10.0, blackhole=True), now=0.001)
    assert not d.offer(FRAME, now=0.002)
    assert d.pop_due(1.0) == []
    assert d.counters.blackholed == 2
    d.configure(DirectionParams(delay_ms=10.0), now=0.003)
    assert d.offer(FRAME, now=0.003)
    assert d.pop_due(1.0) == [FRAME]


def test_control_params_validate() -> None:
    base = DirectionParams(rate_mbit=10.0)
    assert parse_params({"loss": 0.05, "rate_mbit": None}, base) == DirectionParams(loss=0.05)
    for bad in ({"speed": 1}, {"loss": "x"}, {"loss": 2}, {"rate_mbit": 0},
                {"blackhole": 1}, {"delay_ms": -1}, [1]):
        with pytest.raises(ControlError):
            parse_params(bad, base)


def test_icmp_echo_encoding() -> None:
    packet = echo_request(0x1234, 7, b"abcd")
    assert checksum(packet) == 0
    reply = bytearray(bytes([0x45]) + bytes(19) + packet)
    reply[20] = 0  # echo reply
    assert parse_reply(bytes(reply), 0x1234) == 7
    assert parse_reply(bytes(reply), 0x9999) is None
    assert parse_reply(b"\x45" + bytes(10), 0x1234) is None
