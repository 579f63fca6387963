"""The lab's judges of a failover, on synthetic data: the UDP stream tally (``seqstream``),
the goodput dip between cuts (``failover.goodput_dip``) and the stream on loopback."""

from __future__ import annotations

import socket
import threading

from ratbond.lab.failover import Interval, goodput_dip, median_goodput
from ratbond.lab.seqstream import decode, encode, receive, send, tally


def test_tally_counts_lost_duplicated_reordered_and_foreign() -> None:
    seen = tally(6, [0, 1, 3, 2, 3, 5, 9])
    assert (seen.sent, seen.received, seen.lost, seen.duplicates, seen.reordered,
            seen.foreign) == (6, 7, 1, 1, 1, 1)
    assert seen.first_lost == (4,)


def test_tally_of_a_perfect_stream_is_clean() -> None:
    seen = tally(100, list(range(100)))
    assert (seen.lost, seen.duplicates, seen.reordered, seen.foreign) == (0, 0, 0, 0)


def test_tally_of_nothing_received_loses_everything() -> None:
    assert tally(3, []).lost == 3


def test_datagrams_round_trip_and_strangers_are_ignored() -> None:
    assert decode(encode(41, 0.0)) == 41
    assert len(encode(41, 0.0)) == 160
    assert decode(b"XXXX" + encode(41, 0.0)[4:]) is None
    assert decode(b"short") is None


def test_a_stream_over_loopback_arrives_complete() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got: list[int] = []
    bound = threading.Event()
    receiver = threading.Thread(
        target=lambda: got.extend(receive("127.0.0.1", port, 10.0, on_ready=bound.set)))
    receiver.start()
    assert bound.wait(5)
    sent = send("127.0.0.1", port, 0.4, pps=50, ports=3)
    receiver.join(timeout=15)
    assert not receiver.is_alive()
    assert sent == 20
    result = tally(sent, got)
    assert (result.lost, result.duplicates, result.foreign) == (0, 0, 0)
    assert result.received == 20


def _intervals(rates_mbit: list[float]) -> list[Interval]:
    return [Interval(start=k * 0.1, end=(k + 1) * 0.1, seconds=0.1,
                     bits_per_second=r * 1e6, streams=(r * 1e6,))
            for k, r in enumerate(rates_mbit)]


def test_each_cut_gets_the_dip_that_follows_it() -> None:
    rates = [10.0] * 20 + [1.0] * 5 + [10.0] * 20 + [2.0] * 2 + [10.0] * 10
    intervals = _intervals(rates)
    median = median_goodput(intervals, settle=1.0)
    assert median == 10e6
    first = goodput_dip(intervals, 2.0, 4.4, median)
    second = goodput_dip(intervals, 4.4, float("inf"), median)
    assert (first.seconds, first.starts_at) == (0.5, 2.0)
    assert (second.seconds, second.starts_at) == (0.2, 4.5)
    assert first.lowest_mbit == 1.0 and second.lowest_mbit == 2.0


def test_no_dip_is_zero_seconds() -> None:
    intervals = _intervals([10.0] * 30)
    dip = goodput_dip(intervals, 1.0, 3.0, 10e6)
    assert (dip.seconds, dip.starts_at, dip.lowest_mbit) == (0.0, None, 10.0)


def test_a_dip_that_began_before_the_window_counts_whole() -> None:
    intervals = _intervals([10.0] * 10 + [0.0] * 6 + [10.0] * 10)
    dip = goodput_dip(intervals, 1.3, 2.6, 10e6)
    assert dip.seconds == 0.6 and dip.starts_at == 1.0
