"""Reorder buffer: in-order release, timeouts, duplicates, late packets, wrap, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratbond.bond.reorder import MAX_JUMP, DedupWindow, ReorderBuffer


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
    JUMP = MAX_JUMP - 1  # noqa: N806 - the farthest jump accepted
    sink.push(3)
    sink.push(JUMP)  # the window moves to end at JUMP; everything before is given up
    assert sink.out == [packet(3)]
    assert sink.buffer.expected_seq == JUMP - 7
    stats = sink.buffer.stats()
    assert (stats.held, stats.skipped) == (1, JUMP - 8)
    sink.buffer.expire(1.0)
    assert sink.out == [packet(3), packet(JUMP)]


def test_jump_of_max_jump_or_more_is_rejected_so_no_seq_comes_back_ahead() -> None:
    sink = Sink(max_packets=1, timeout=0.0)
    for step, seq in enumerate([0, 2**31, 0]):  # three half-space jumps would wrap
        sink.push(seq, float(step))
        sink.buffer.expire(float(step))
    assert sink.out == [packet(0)]
    assert sink.buffer.stats().rejected == 1
    assert sink.buffer.stats().duplicates == 1


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


def test_express_packets_go_out_at_once_and_fill_their_place() -> None:
    sink = Sink(timeout=0.25)
    sink.push(0)
    sink.buffer.pass_through(2, packet(2), 1.0)  # ahead of a gap, yet out at once
    assert sink.out == [packet(0), packet(2)]
    sink.push(3, 1.0)
    assert sink.out == [packet(0), packet(2)]  # ordinary DATA still waits for seq 1
    assert sink.buffer.deadline() == 1.25
    sink.push(1, 1.1)
    assert sink.out == [packet(0), packet(2), packet(1), packet(3)]  # 2 is not repeated
    sink.buffer.pass_through(2, packet(2), 1.2)  # a second copy
    stats = sink.buffer.stats()
    assert (stats.passed, stats.duplicates, stats.held) == (1, 1, 0)


def test_give_up_timer_fires_exactly_and_a_late_packet_still_goes_out() -> None:
    sink = Sink(timeout=0.25)
    sink.push(0, 0.0)
    sink.push(2, 1.0)
    sink.buffer.expire(1.2499)
    assert sink.out == [packet(0)]
    assert sink.buffer.deadline() == 1.25
    sink.buffer.expire(1.25)
    assert sink.out == [packet(0), packet(2)]
    assert sink.buffer.stats().gave_up == 1
    sink.push(1, 1.5)
    assert sink.out == [packet(0), packet(2), packet(1)]
    assert sink.buffer.stats().late == 1


def test_an_adaptive_timeout_grows_to_what_gaps_really_waited() -> None:
    sink = Sink(timeout=0.05)
    sink.buffer.adapt_up_to = 1.0
    sink.push(0, 0.0)
    sink.push(2, 1.0)
    sink.push(1, 1.08)  # seq 2 waited 80 ms for its gap
    assert sink.buffer.observed_wait == pytest.approx(0.08)
    assert sink.buffer.timeout == pytest.approx(1.25 * 0.08)
    # Given up too early, a late arrival says how long the gap needed: 300 ms.
    sink.push(4, 2.0)
    sink.buffer.expire(2.1)
    sink.push(3, 2.3)
    assert sink.buffer.stats().late == 1
    assert sink.buffer.timeout == pytest.approx(1.25 * 0.3)
    # Gaps given up because their path died are not held against the timeout.
    sink.push(6, 3.0)
    sink.buffer.expire(float("inf"))
    sink.push(5, 3.9)
    assert sink.buffer.timeout == pytest.approx(1.25 * 0.3)
    # A fixed timeout (no adapt_up_to) never moves.
    fixed = Sink(timeout=0.05)
    fixed.push(0, 0.0)
    fixed.push(2, 1.0)
    fixed.push(1, 1.08)
    assert fixed.buffer.timeout == 0.05


def test_dedup_window_passes_each_seq_once_within_its_window() -> None:
    window = DedupWindow(size=8)
    assert [window.fresh(seq) for seq in (1, 2, 1, 3, 2)] == [True, True, False, True, False]
    assert window.duplicates == 2
    assert window.fresh(9)  # same slot as 1: 1 is forgotten, 9 is new
    assert window.fresh(1)  # beyond the window: seen as new again (the bound's price)
