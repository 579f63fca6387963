"""Reorder buffer: in-order release, timeouts, duplicates, late packets, wrap, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratbond.bond.reorder import ReorderBuffer


def packet(seq: int) -> bytes:
    return b"p%d" % seq


class Sink:
    def __init__(self, **options: object) -> None:
        self.out: list[bytes] = []
        self.buffer = ReorderBuffer(self.out.append, **options)  # type: ignore[arg-type]

    def push(self, seq: int, now: float = 0.0) -> None:
        self.buffer.push(seq, packet(seq), now)


def test_in_order_packets_pass_straight_through() -> None:
    sink = Sink()
    for seq in range(5):
        sink.push(seq)
        assert sink.out[-1] == packet(seq)
    assert sink.buffer.deadline() is None
    assert sink.buffer.stats().held == 0


def test_gap_holds_then_fills() -> None:
    sink = Sink()
    sink.push(0)
    sink.push(2, 1.0)
    sink.push(3, 1.01)
    assert sink.out == [packet(0)]
    assert sink.buffer.stats().held == 2
    sink.push(1, 1.02)
    assert sink.out == [packet(s) for s in range(4)]
    assert sink.buffer.stats().held == 0
    assert sink.buffer.deadline() is None


def test_gap_released_exactly_at_timeout() -> None:
    sink = Sink(timeout=0.05)
    sink.push(1, 10.0)
    sink.push(2, 10.02)
    assert sink.buffer.deadline() == pytest.approx(10.05)
    sink.buffer.expire(10.049)
    assert sink.out == []
    sink.buffer.expire(10.05)
    assert sink.out == [packet(1), packet(2)]
    stats = sink.buffer.stats()
    assert (stats.released_by_timeout, stats.skipped, stats.held) == (1, 1, 0)


def test_each_gap_gets_its_own_wait_from_its_oldest_packet() -> None:
    sink = Sink(timeout=0.1)
    sink.push(1, 0.0)  # gap at 0
    sink.push(3, 0.08)  # gap at 2, waiting since 0.08
    sink.buffer.expire(0.1)
    assert sink.out == [packet(1)]
    assert sink.buffer.deadline() == pytest.approx(0.18)
    sink.buffer.expire(0.18)
    assert sink.out == [packet(1), packet(3)]


def test_late_packet_after_its_gap_was_given_up_is_still_delivered() -> None:
    sink = Sink(timeout=0.05)
    sink.push(1, 0.0)
    sink.buffer.expire(1.0)
    sink.push(0, 1.1)
    assert sink.out == [packet(1), packet(0)]
    assert sink.buffer.stats().late == 1
    sink.push(0, 1.2)  # now a true duplicate
    assert sink.out == [packet(1), packet(0)]
    assert sink.buffer.stats().duplicates == 1


def test_duplicates_of_delivered_and_held_packets_are_dropped() -> None:
    sink = Sink()
    sink.push(0)
    sink.push(0)
    sink.push(2)
    sink.push(2)
    sink.push(1)
    assert sink.out == [packet(0), packet(1), packet(2)]
    assert sink.buffer.stats().duplicates == 2


def test_sequence_numbers_wrap() -> None:
    first = 2**32 - 2
    sink = Sink(first_seq=first)
    sink.push(2**32 - 1)
    sink.push(0)
    sink.push(first)
    assert sink.out == [packet(2**32 - 2), packet(2**32 - 1), packet(0)]
    sink.push(2**32 - 1)  # behind across the wrap: a duplicate
    assert sink.buffer.stats().duplicates == 1
    assert sink.buffer.expected_seq == 1


def test_window_bound_releases_oldest_gap() -> None:
    sink = Sink(max_packets=4)
    sink.push(1)
    sink.push(3)
    assert sink.out == []
    sink.push(5)  # beyond [0, 4): the window moves to [2, 6)
    assert sink.out == [packet(1)]
    assert sink.buffer.expected_seq == 2
    sink.push(2)
    assert sink.out == [packet(1), packet(2), packet(3)]
    assert sink.buffer.stats().released_by_bound == 1


def test_far_jump_does_not_walk_the_whole_sequence_space() -> None:
    sink = Sink(max_packets=8)
    sink.push(3)
    sink.push(2**30)  # the window moves to end at 2**30; everything before is given up
    assert sink.out == [packet(3)]
    assert sink.buffer.expected_seq == 2**30 - 7
    stats = sink.buffer.stats()
    assert (stats.held, stats.skipped) == (1, 2**30 - 8)
    sink.buffer.expire(1.0)
    assert sink.out == [packet(3), packet(2**30)]


def test_byte_bound_releases_oldest_gap() -> None:
    sink = Sink(max_bytes=5)  # each packet here is 2 bytes
    sink.push(1)
    sink.push(2)
    assert sink.out == []
    sink.push(4)
    assert sink.out == [packet(1), packet(2)]
    assert sink.buffer.stats().held == 1
    assert sink.buffer.stats().held_bytes == 2


@pytest.mark.parametrize("options", [{"max_packets": 0}, {"max_bytes": 0}, {"timeout": -1.0}])
def test_bad_bounds_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReorderBuffer(lambda _p: None, **options)  # type: ignore[arg-type]


@given(st.permutations(list(range(40))))
def test_any_permutation_within_the_window_comes_out_sorted(order: list[int]) -> None:
    sink = Sink(max_packets=64)
    for seq in order:
        sink.push(seq)
    assert sink.out == [packet(seq) for seq in range(40)]


@given(st.lists(st.integers(0, 2**32 - 1), max_size=60), st.integers(1, 16))
def test_arbitrary_sequence_numbers_never_duplicate_output(seqs: list[int], window: int) -> None:
    sink = Sink(max_packets=window, timeout=0.0)
    for step, seq in enumerate(seqs):
        sink.push(seq, float(step))
        sink.buffer.expire(float(step))
    assert len(sink.out) == len(set(sink.out))
    assert set(sink.out) <= {packet(seq) for seq in seqs}
