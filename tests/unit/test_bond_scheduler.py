"""Rendezvous hashing moves the minimum of flows; spraying picks the earliest delivery."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from ratbond.bond.scheduler import (
    SMALL_HEADROOM,
    AdaptiveScheduler,
    ConsistentScheduler,
    hrw_score,
)

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


@dataclass
class FakeLane:
    """A path as the spraying scheduler sees it: queue, bound, rate and RTT."""

    queued: int
    limit: int
    rate: float  # segments/s
    rtt: float  # seconds
    window: int = 0
    inflight: int = 0  # of ``queued``, segments already sent
    seconds_per_segment: float = 0.0
    half_rtt: float = 0.0

    def __post_init__(self) -> None:
        self.seconds_per_segment = 1.0 / self.rate
        self.half_rtt = self.rtt / 2

    def waitsnd(self) -> int:
        return self.queued

    def unsent(self) -> int:
        return self.queued - self.inflight


def spray(lanes: list[FakeLane], packets: int) -> list[int]:
    """Pick ``packets`` times, queueing each packet on its lane; lane indexes chosen."""
    scheduler: AdaptiveScheduler[FakeLane] = AdaptiveScheduler()
    scheduler.set_paths(lanes)
    chosen = []
    for _ in range(packets):
        lane = scheduler.pick()
        assert lane is not None
        lane.queued += 1
        chosen.append(lanes.index(lane))
    return chosen


def test_adaptive_shares_packets_in_proportion_to_rates() -> None:
    lanes = [FakeLane(0, 10_000, 3000.0, 0.04), FakeLane(0, 10_000, 1000.0, 0.04)]
    counts = Counter(spray(lanes, 4000))
    assert counts[0] == pytest.approx(3000, abs=2)
    assert counts[1] == pytest.approx(1000, abs=2)


def test_equal_lanes_take_turns_instead_of_the_first_taking_everything() -> None:
    # Four twin links whose half RTTs differ by less than TIE_SECONDS: a tie.
    lanes = [
        FakeLane(0, 10_000, 1000.0, rtt, window=1000) for rtt in (0.0010, 0.0012, 0.0014, 0.0016)
    ]
    assert Counter(spray(lanes, 400)) == {0: 100, 1: 100, 2: 100, 3: 100}
    # A clearly shorter path still wins while its queue costs less than the difference
    # (1 ms of half RTT; 10 packets at 100,000 segments/s queue 0.1 ms).
    lanes = [FakeLane(0, 10_000, 100_000.0, 0.002), FakeLane(0, 10_000, 100_000.0, 0.004)]
    assert Counter(spray(lanes, 10)) == {0: 10}


def test_adaptive_gives_a_long_path_packets_only_once_short_ones_queue() -> None:
    # Equal rates, 100 ms more RTT: the long path is worth it behind 50 ms of queue.
    lanes = [FakeLane(0, 10_000, 1000.0, 0.02), FakeLane(0, 10_000, 1000.0, 0.12)]
    chosen = spray(lanes, 200)
    assert chosen[:50] == [0] * 50
    assert Counter(chosen[50:]) == {0: 75, 1: 75}


def test_the_whole_queue_counts_at_the_estimated_rate() -> None:
    # Path 1 is estimated ten times slower: each packet queued there costs 100 ms, so it
    # gets one packet for every ten that path 0 takes, however free its window is.
    lanes = [FakeLane(0, 10_000, 1000.0, 0.02), FakeLane(0, 10_000, 100.0, 0.02, window=20)]
    chosen = spray(lanes, 110)
    assert Counter(chosen) == {0: 100, 1: 10}


def test_a_copy_whose_arrival_overshoots_the_reorder_budget_is_not_sent() -> None:
    # A 600 ms path next to a 20 ms one, a 100 ms budget: a second copy of a packet on
    # the short path would come 290 ms after the first, so none is sent; the other way
    # round the copy is worth it.
    lanes = [FakeLane(0, 10_000, 1000.0, 0.02), FakeLane(0, 10_000, 1000.0, 0.6)]
    scheduler: AdaptiveScheduler[FakeLane] = AdaptiveScheduler()
    scheduler.set_paths(lanes)
    scheduler.budget = 0.1
    assert scheduler.pick_other(lanes[0]) is None
    assert scheduler.pick_other(lanes[1]) is lanes[0]
    # Bulk packets are not bound by it: the long path is used once the short one queues
    # 290 ms, as arrivals say.
    chosen = spray(lanes, 300)
    assert chosen[:290] == [0] * 290
    assert 1 in chosen[290:]


def test_a_lane_that_would_arrive_beyond_the_budget_behind_a_full_one_gets_nothing() -> None:
    # The 20 ms lane is full (100 segments: its last arrives 10 + 101 ms on); the 600 ms
    # lane has room but its packet would arrive 300 ms on: 190 ms after, over the budget.
    lanes = [FakeLane(0, 100, 1000.0, 0.02), FakeLane(0, 10_000, 1000.0, 0.6)]
    scheduler: AdaptiveScheduler[FakeLane] = AdaptiveScheduler()
    scheduler.set_paths(lanes)
    scheduler.budget = 0.1
    chosen = []
    while (lane := scheduler.pick()) is not None:
        lane.queued += 1
        chosen.append(lanes.index(lane))
    assert chosen == [0] * 100
    scheduler.budget = 0.2  # a hold long enough: the long lane is worth it now
    assert scheduler.pick() is lanes[1]


def test_small_packets_take_the_lowest_rtt_lane_with_room() -> None:
    lanes = [
        FakeLane(500, 10_000, 1000.0, 0.05),
        FakeLane(0, 10_000, 5000.0, 0.08),
        FakeLane(0, 10, 1000.0, 0.01),
    ]
    scheduler: AdaptiveScheduler[FakeLane] = AdaptiveScheduler()
    scheduler.set_paths(lanes)
    assert scheduler.pick_fastest() is lanes[2]
    lanes[2].queued = 10  # full for bulk, not for small packets
    assert scheduler.pick() is not lanes[2]
    assert scheduler.pick_fastest() is lanes[2]
    lanes[2].queued = 10 + SMALL_HEADROOM  # past the headroom too
    assert scheduler.pick_fastest() is lanes[0]  # lowest RTT, whatever its queue
    assert scheduler.pick_fastest(exclude=lanes[0]) is lanes[1]
    assert scheduler.pick_other(lanes[1]) is lanes[0]
    lanes[2].queued = 10
    assert scheduler.pick_any() is lanes[2]  # full, but the earliest arrival (resends)


def test_adaptive_skips_full_paths_and_gives_up_when_all_are_full() -> None:
    lanes = [FakeLane(0, 5, 1000.0, 0.01), FakeLane(0, 3, 10.0, 0.5)]
    chosen = spray(lanes, 8)
    assert Counter(chosen) == {0: 5, 1: 3}
    scheduler: AdaptiveScheduler[FakeLane] = AdaptiveScheduler()
    scheduler.set_paths(lanes)
    assert scheduler.pick() is None
    assert AdaptiveScheduler[FakeLane]().pick() is None


def test_the_reorder_budget_counts_what_waits_to_leave_not_what_is_in_flight() -> None:
    # Both short lanes are full; the long lane has its pipe in flight (120 segments) and
    # nothing waiting: a new packet on it arrives after 60 ms, 5 ms after one on the short
    # lanes would -- well inside a 20 ms budget, though everything it holds takes 180 ms.
    short = [FakeLane(100, 100, 4000.0, 0.100, inflight=80) for _ in range(2)]
    long = FakeLane(120, 1000, 1000.0, 0.120, inflight=120)
    scheduler: AdaptiveScheduler[FakeLane] = AdaptiveScheduler()
    scheduler.set_paths([*short, long])
    scheduler.budget = 0.020
    assert scheduler.pick() is long
    # Had those 120 segments still to leave, the packet would come 120 ms late: dropped.
    long.inflight = 0
    assert scheduler.pick() is None
