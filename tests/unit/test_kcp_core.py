"""KCP engine behaviour, run against both engines (pure Python and the reference C).

Scenarios drive one engine by hand: we write the peer's segments ourselves and read what
the engine emits, under a fake clock.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratbond.kcp import EngineName, KCPEngine, c_engine_available, create
from ratbond.kcp.core import CMD_ACK, CMD_PUSH, CMD_WASK, CMD_WINS, KCP, validate_datagram

HEADER = struct.Struct("<IBBHIIII")
CONV = 0x0A0B0C0D

ENGINES = [
    "python",
    pytest.param(
        "c", marks=pytest.mark.skipif(not c_engine_available(), reason="siokcp not installed")
    ),
]


class Probe:
    """An engine plus everything it emitted, decoded."""

    def __init__(self, engine_name: EngineName) -> None:
        self.datagrams: list[bytes] = []
        self.engine: KCPEngine = create(CONV, self.datagrams.append, engine_name)

    def segments(self) -> list[tuple[int, ...]]:
        """(cmd, frg, wnd, ts, sn, una, len) of every emitted segment, then forget them."""
        out = []
        for data in self.datagrams:
            offset = 0
            while offset < len(data):
                fields = HEADER.unpack_from(data, offset)
                out.append(fields[1:])
                offset += HEADER.size + fields[7]
        self.datagrams.clear()
        return out


def seg(
    cmd: int,
    *,
    sn: int = 0,
    una: int = 0,
    ts: int = 0,
    wnd: int = 128,
    frg: int = 0,
    data: bytes = b"",
    conv: int = CONV,
    length: int | None = None,
) -> bytes:
    size = len(data) if length is None else length
    return HEADER.pack(conv, cmd, frg, wnd, ts, sn, una, size) + data


@pytest.fixture(params=ENGINES)
def probe(request: pytest.FixtureRequest) -> Probe:
    return Probe(request.param)


def _transmission_times(probe: Probe, until: int) -> list[int]:
    times = []
    for now in range(0, until, 1):
        probe.engine.update(now)
        times += [now for s in probe.segments() if s[0] == CMD_PUSH]
    return times


def test_rto_backoff_doubles_in_normal_mode(probe: Probe) -> None:
    probe.engine.nodelay(0, 10, 0, 1)
    probe.engine.send(b"x")
    times = _transmission_times(probe, 4000)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # rto 200 (+ rto/8 slack on the first: 225, seen at the next 10 ms flush tick),
    # then doubling: 400, 800, 1600.
    assert gaps[:4] == [230, 400, 800, 1600]


def test_rto_backoff_grows_by_half_with_nodelay(probe: Probe) -> None:
    probe.engine.nodelay(1, 10, 0, 0)
    probe.engine.send(b"x")
    times = _transmission_times(probe, 3000)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 200, then +50 % each time: 300, 450, 675 (seen at the 680 ms flush tick).
    assert gaps[:4] == [200, 300, 450, 680]


def test_rto_follows_measured_rtt(probe: Probe) -> None:
    probe.engine.nodelay(1, 10, 0, 0)
    probe.engine.send(b"x")
    probe.engine.update(1000)
    probe.engine.update(1040)
    assert probe.engine.input(seg(CMD_ACK, sn=0, una=1, ts=1000)) == 0
    assert probe.engine.srtt == 40
    # srtt + max(interval, 4 * rttval) = 40 + 80, above nodelay's 30 ms floor.
    assert probe.engine.rto == 120
    assert probe.engine.inflight == 0


def _send_five_and_flush(probe: Probe) -> None:
    probe.engine.nodelay(1, 10, 2, 1)
    for i in range(5):
        probe.engine.send(bytes([i]) * 10)
    probe.engine.update(0)
    assert [s[4] for s in probe.segments()] == [0, 1, 2, 3, 4]


def test_fast_resend_after_resend_duplicate_acks(probe: Probe) -> None:
    _send_five_and_flush(probe)
    probe.engine.update(10)
    probe.engine.input(seg(CMD_ACK, sn=2, ts=0))  # sn 0, 1 skipped once
    probe.engine.update(20)
    assert [s for s in probe.segments() if s[0] == CMD_PUSH] == []
    probe.engine.input(seg(CMD_ACK, sn=3, ts=0))  # skipped twice: resend = 2 reached
    probe.engine.update(30)
    assert [s[4] for s in probe.segments() if s[0] == CMD_PUSH] == [0, 1]
    assert probe.engine.state == 0


def test_fastlimit_stops_fast_resend_of_often_sent_segment() -> None:
    engine = KCP(CONV, lambda _data: None)
    engine.fastlimit = 1  # only segments sent once may be fast-resent
    engine.nodelay(1, 10, 1, 1)
    for i in range(6):
        engine.send(bytes([i]))
    engine.update(0)
    engine.update(10)
    engine.input(seg(CMD_ACK, sn=2, ts=0))
    engine.update(20)  # sn 0 and 1 skipped once (resend = 1): fast-resent, xmit now 2
    assert engine.retransmits == 2
    engine.input(seg(CMD_ACK, sn=3, ts=0))
    engine.update(30)
    engine.input(seg(CMD_ACK, sn=4, ts=0))
    engine.update(40)
    assert engine.retransmits == 2  # xmit 2 > fastlimit 1: only the timer may resend now
    engine.update(300)
    assert engine.retransmits == 5  # ...and it does: sn 0, 1 and the unacked sn 5


def test_window_probe_when_remote_window_closes(probe: Probe) -> None:
    probe.engine.nodelay(1, 10, 0, 1)
    probe.engine.update(0)
    probe.engine.input(seg(CMD_WINS, wnd=0))
    assert probe.engine.rmt_wnd == 0
    probe.engine.send(b"blocked")
    probe.engine.update(10)
    assert probe.segments() == []  # nothing may be sent into a closed window
    probe.engine.update(6999)
    assert probe.segments() == []
    probe.engine.update(7010)  # 7 s after the window closed: ask
    assert [s[0] for s in probe.segments()] == [CMD_WASK]
    probe.engine.input(seg(CMD_WINS, wnd=32))
    probe.engine.update(7020)
    assert [s[0] for s in probe.segments()] == [CMD_PUSH]


def test_answers_window_ask_with_window_size(probe: Probe) -> None:
    probe.engine.update(0)
    assert probe.engine.input(seg(CMD_WASK)) == 0
    probe.engine.update(100)
    assert [(s[0], s[2]) for s in probe.segments()] == [(CMD_WINS, 128)]


def test_dead_link_after_n_transmissions(probe: Probe) -> None:
    probe.engine.nodelay(1, 10, 0, 1)
    probe.engine.set_dead_link(3)
    probe.engine.send(b"into the void")
    now = 0
    states = []
    while now < 5000:
        probe.engine.update(now)
        if any(s[0] == CMD_PUSH for s in probe.segments()):
            states.append(probe.engine.state)
        now += 10
    assert states[:3] == [0, 0, -1]


def test_message_fragments_reassemble_in_receiver(probe: Probe) -> None:
    probe.engine.update(0)
    parts = [b"aa", b"bb", b"cc"]
    for sn, (frg, part) in enumerate(zip((2, 1, 0), parts, strict=True)):
        assert probe.engine.peeksize() == -1
        assert probe.engine.recv() is None
        probe.engine.input(seg(CMD_PUSH, sn=sn, frg=frg, data=part))
    assert probe.engine.peeksize() == 6
    assert probe.engine.recv() == b"aabbcc"
    assert probe.engine.recv() is None


def test_out_of_order_and_duplicate_segments(probe: Probe) -> None:
    probe.engine.update(0)
    for sn in (2, 0, 2, 1, 0):
        assert probe.engine.input(seg(CMD_PUSH, sn=sn, data=bytes([sn]))) == 0
    assert [probe.engine.recv() for _ in range(4)] == [b"\0", b"\1", b"\2", None]


def test_segment_beyond_receive_window_is_dropped_unacked(probe: Probe) -> None:
    probe.engine.update(0)
    probe.engine.input(seg(CMD_PUSH, sn=128, data=b"far"))
    probe.engine.update(100)
    assert probe.segments() == []
    assert probe.engine.recv() is None


# -- malformed input: an error code, and no trace of it ------------------------------------


def _assert_untouched(probe: Probe, data: bytes, code: int) -> None:
    probe.engine.update(0)
    assert probe.engine.input(data) == code
    probe.engine.update(100)
    assert probe.segments() == []  # no ack, no window update
    assert probe.engine.rmt_wnd == 128
    assert probe.engine.recv() is None


def test_short_header_is_rejected(probe: Probe) -> None:
    _assert_untouched(probe, seg(CMD_PUSH, data=b"x")[:23], -1)


def test_wrong_conv_is_rejected(probe: Probe) -> None:
    _assert_untouched(probe, seg(CMD_PUSH, wnd=5, data=b"x", conv=CONV + 1), -1)


def test_length_beyond_data_is_rejected(probe: Probe) -> None:
    _assert_untouched(probe, seg(CMD_PUSH, wnd=5, data=b"abc", length=4), -2)


def test_unknown_command_is_rejected(probe: Probe) -> None:
    _assert_untouched(probe, seg(99, wnd=5), -3)


def test_bad_second_segment_rejects_whole_datagram(probe: Probe) -> None:
    """Stricter than bare ikcp, which would have applied the first segment already."""
    good = seg(CMD_PUSH, sn=0, wnd=5, data=b"ok")
    _assert_untouched(probe, good + seg(CMD_PUSH, sn=1, data=b"x", length=99), -2)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200), st.booleans())
def test_validation_agrees_with_input(data: bytes, with_conv: bool) -> None:
    """The shared validator (guarding the C engine) rejects exactly what KCP.input rejects."""
    if with_conv:
        data = struct.pack("<I", CONV) + data
    engine = KCP(CONV, lambda _out: None)
    code = engine.input(data)
    assert validate_datagram(data, CONV) == code


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_never_raises(data: bytes, with_conv: bool) -> None:
    engine = KCP(CONV, lambda _out: None)
    if with_conv:
        data = struct.pack("<I", CONV) + data
    engine.update(0)
    assert engine.input(data) <= 0
    engine.update(100)
    assert len(engine._rcv_buf) <= engine.rcv_wnd


# -- timers and settings ---------------------------------------------------------------------


def test_check_returns_exact_next_timer(probe: Probe) -> None:
    engine = probe.engine
    assert engine.check(5) == 5  # never updated: update now
    engine.update(1000)
    assert engine.check(1000) == 1100  # next interval tick
    assert engine.check(1100) == 1100
    engine.nodelay(1, 10, 0, 1)
    engine.update(1100)  # ts_flush was 1100 -> flush, next at 1110
    engine.send(b"x")
    engine.update(1110)  # first transmission: resend due at 1110 + rto 200
    assert engine.check(1111) == 1120
    assert engine.check(1115) == 1120
    for now in range(1120, 1310, 10):
        engine.update(now)
    assert engine.check(1305) == 1310


def test_check_handles_32_bit_clock_wrap(probe: Probe) -> None:
    start = 2**32 - 5
    probe.engine.update(start)
    assert probe.engine.check(start) == start + 100
    probe.engine.update(start + 100)
    assert probe.engine.check(start + 101) == start + 200


def test_setmtu_rejects_too_small(probe: Probe) -> None:
    assert probe.engine.setmtu(49) == -1
    assert probe.engine.mss == 1376
    assert probe.engine.setmtu(500) == 0
    assert probe.engine.mss == 476


def test_mtu_bounds_every_datagram(probe: Probe) -> None:
    probe.engine.setmtu(200)
    probe.engine.wndsize(128, 128)
    probe.engine.nodelay(1, 10, 0, 1)
    assert probe.engine.send(b"z" * 5000) == 5000
    probe.engine.update(0)
    assert probe.datagrams and all(len(d) <= 200 for d in probe.datagrams)
    pushes = [s for s in probe.segments() if s[0] == CMD_PUSH]
    assert [s[1] for s in pushes[:3]] == [28, 27, 26]  # frg counts down to 0
    assert sum(s[6] for s in pushes) == 5000


def test_wndsize_keeps_values_for_non_positive_and_floors_receive_window(probe: Probe) -> None:
    assert probe.engine.wndsize(64, 16) == 0
    assert probe.engine.snd_wnd == 64
    assert probe.engine.wndsize(0, -1) == 0
    assert probe.engine.snd_wnd == 64
    probe.engine.update(0)
    probe.engine.input(seg(CMD_WASK))
    probe.engine.update(100)
    assert [s[2] for s in probe.segments()] == [128]  # receive window never below 128


def test_nodelay_negative_arguments_leave_settings(probe: Probe) -> None:
    assert probe.engine.nodelay(1, 10, 2, 1) == 0
    assert probe.engine.nodelay(-1, -1, -1, -1) == 0
    probe.engine.send(b"x")
    probe.engine.update(0)
    probe.segments()
    probe.engine.update(10)  # interval still 10 ms; nodelay 1: no rto/8 slack
    assert probe.engine.check(10) == 20


def test_send_errors(probe: Probe) -> None:
    assert probe.engine.send(b"") == -1
    assert probe.engine.send(b"x" * (1376 * 128)) == -2  # 128 fragments never reassemble
    assert probe.engine.send(b"x" * (1376 * 127)) == 1376 * 127
    assert probe.engine.waitsnd() == 127


def test_stream_mode_coalesces_small_writes(probe: Probe) -> None:
    probe.engine.set_stream(True)
    probe.engine.nodelay(0, 10, 0, 1)
    assert probe.engine.send(b"ab") == 2
    assert probe.engine.send(b"cd") == 2
    assert probe.engine.waitsnd() == 1
    probe.engine.update(0)
    pushes = [s for s in probe.segments() if s[0] == CMD_PUSH]
    assert [(s[1], s[6]) for s in pushes] == [(0, 4)]


def test_conv_must_fit_32_bits() -> None:
    with pytest.raises(ValueError, match="32 bits"):
        KCP(2**32, lambda _data: None)
