"""The replay window: edges, big jumps, the counter limit, and a model-based property."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ratbond.crypto.replay import WINDOW_SIZE, ReplayWindow


def test_window_is_large_enough() -> None:
    assert WINDOW_SIZE >= 2048


def test_in_order_once_each() -> None:
    window = ReplayWindow()
    assert window.newest is None
    assert all(window.accept(counter) for counter in range(100))
    assert not any(window.accept(counter) for counter in range(100))
    assert window.newest == 99


def test_check_does_not_change_state() -> None:
    window = ReplayWindow()
    assert window.check(5) and window.check(5)
    assert window.newest is None
    window.commit(5)
    assert not window.check(5)


def test_reordered_inside_window_accepted_once() -> None:
    window = ReplayWindow()
    assert window.accept(10)
    for counter in (3, 9, 0, 7):
        assert window.accept(counter)
        assert not window.accept(counter)
    assert window.newest == 10


def test_window_edges() -> None:
    window = ReplayWindow()
    top = WINDOW_SIZE + 100
    assert window.accept(top)
    assert not window.accept(top - WINDOW_SIZE)  # one too old
    assert window.accept(top - WINDOW_SIZE + 1)  # the oldest still inside
    assert not window.accept(top - WINDOW_SIZE + 1)
    assert window.accept(top + 1)  # slides by one: the edge moves too
    assert not window.accept(top - WINDOW_SIZE + 1)
    assert window.accept(top - WINDOW_SIZE + 2)


def test_jump_by_exactly_the_window_forgets_everything_below() -> None:
    window = ReplayWindow()
    for counter in range(5):
        window.accept(counter)
    assert window.accept(4 + WINDOW_SIZE)
    assert not window.accept(4)  # now exactly WINDOW_SIZE behind
    assert window.accept(5)  # never seen, WINDOW_SIZE - 1 behind


def test_huge_jump_is_cheap_and_correct() -> None:
    window = ReplayWindow()
    assert window.accept(0)
    assert window.accept(10**18)
    assert window.accept(10**18 - 1)
    assert not window.accept(0)
    assert not window.accept(10**18 - WINDOW_SIZE)


def test_counter_limit() -> None:
    window = ReplayWindow()
    assert window.accept(2**64 - 1)  # the default limit admits the last 64-bit value
    assert not window.accept(2**64)
    limited = ReplayWindow(limit=2**64 - 2**13)
    assert limited.accept(2**64 - 2**13 - 1)
    assert not limited.accept(2**64 - 2**13)
    assert not limited.accept(2**64 - 1)
    assert limited.accept(2**64 - 2**13 - 2)  # older, inside the window


NEAR = st.integers(min_value=0, max_value=3 * WINDOW_SIZE)
FAR = st.integers(min_value=0, max_value=2**64 - 1)


@given(st.lists(NEAR, max_size=300), st.sampled_from([2 * WINDOW_SIZE + 7, 2**64]))
def test_matches_a_reference_model(counters: list[int], limit: int) -> None:
    _check_against_model(counters, limit)


@given(st.lists(st.one_of(NEAR, FAR, NEAR.map(lambda c: 2**63 + c)), max_size=200))
def test_matches_the_model_across_big_jumps(counters: list[int]) -> None:
    _check_against_model(counters, 2**64)


def _check_against_model(counters: list[int], limit: int) -> None:
    window = ReplayWindow(limit=limit)
    seen: set[int] = set()
    for counter in counters:
        newest = max(seen, default=None)
        expected = (
            counter < window.limit
            and counter not in seen
            and (newest is None or counter > newest - WINDOW_SIZE)
        )
        assert window.accept(counter) is expected
        if expected:
            seen.add(counter)
