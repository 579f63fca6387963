"""Rendezvous hashing moves the minimum of flows; round-robin skips full paths."""

from __future__ import annotations

from collections import Counter

import pytest

from ratbond.bond.scheduler import ConsistentScheduler, RoundRobinScheduler, hrw_score

FLOWS = [b"flow-%d" % i for i in range(3000)]


def placement(scheduler: ConsistentScheduler) -> dict[bytes, int | None]:
    return {flow: scheduler.pick(flow) for flow in FLOWS}


def test_no_path_means_no_choice() -> None:
    scheduler = ConsistentScheduler()
    assert scheduler.pick(b"x") is None
    scheduler.set_paths({1: 1.0})
    scheduler.set_paths({})
    assert scheduler.pick(b"x") is None


def test_choice_is_stable_and_deterministic() -> None:
    one, two = ConsistentScheduler(), ConsistentScheduler()
    one.set_paths({1: 1.0, 2: 1.0, 3: 1.0})
    two.set_paths({3: 1.0, 1: 1.0, 2: 1.0})
    assert placement(one) == placement(two) == placement(one)


def test_equal_weights_spread_flows_roughly_evenly() -> None:
    scheduler = ConsistentScheduler()
    scheduler.set_paths({1: 1.0, 2: 1.0, 3: 1.0})
    counts = Counter(placement(scheduler).values())
    assert set(counts) == {1, 2, 3}
    for count in counts.values():
        assert 850 <= count <= 1150, counts


def test_weights_scale_the_share_of_flows() -> None:
    scheduler = ConsistentScheduler()
    scheduler.set_paths({1: 3.0, 2: 1.0})
    counts = Counter(placement(scheduler).values())
    assert 0.70 <= counts[1] / len(FLOWS) <= 0.80, counts


def test_a_leaving_path_moves_only_its_own_flows() -> None:
    scheduler = ConsistentScheduler()
    scheduler.set_paths({1: 1.0, 2: 1.0, 3: 1.0})
    before = placement(scheduler)
    scheduler.set_paths({1: 1.0, 3: 1.0})
    after = placement(scheduler)
    moved = {flow for flow in FLOWS if before[flow] != after[flow]}
    assert moved == {flow for flow in FLOWS if before[flow] == 2}
    assert all(after[flow] in (1, 3) for flow in moved)


def test_a_joining_path_takes_flows_only_for_itself() -> None:
    scheduler = ConsistentScheduler()
    scheduler.set_paths({1: 1.0, 2: 1.0})
    before = placement(scheduler)
    scheduler.set_paths({1: 1.0, 2: 1.0, 3: 1.0})
    after = placement(scheduler)
    moved = [flow for flow in FLOWS if before[flow] != after[flow]]
    assert all(after[flow] == 3 for flow in moved)
    assert 850 <= len(moved) <= 1150


def test_scores_depend_on_weight_monotonically() -> None:
    assert hrw_score(b"k", 1, 2.0) == pytest.approx(2 * hrw_score(b"k", 1, 1.0))
    assert hrw_score(b"k", 1, 1.0) != hrw_score(b"k", 2, 1.0)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_weights_are_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        ConsistentScheduler().set_paths({1: weight})


def test_round_robin_rotates_over_paths() -> None:
    scheduler = RoundRobinScheduler()
    scheduler.set_paths([3, 1, 2])
    assert [scheduler.pick(lambda _pid: True) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]


def test_round_robin_skips_full_paths_and_gives_up_when_all_are_full() -> None:
    scheduler = RoundRobinScheduler()
    scheduler.set_paths([1, 2, 3])
    picks = [scheduler.pick(lambda pid: pid != 2) for _ in range(4)]
    assert picks == [1, 3, 1, 3]
    assert scheduler.pick(lambda _pid: False) is None
    assert RoundRobinScheduler().pick(lambda _pid: True) is None
