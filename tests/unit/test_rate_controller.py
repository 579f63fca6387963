"""The pure per-path rate controller: a capacity estimate that cannot collapse, startup,
probing, hints, and the recent-rate meters (all with exact numbers, no network)."""

from __future__ import annotations

import pytest

from ratbond.bond.rate import (
    INITIAL_WINDOW,
    MIN_ROUND,
    PROBE_CYCLE,
    RATE_FILTER_ROUNDS,
    RECENT_RATE_WINDOW,
    STARTUP_GAIN,
    RateController,
    RatePhase,
    RecentRate,
)

RTT = 0.05  # seconds; rounds are MIN_ROUND (0.1 s) long
STEP = 0.125  # seconds per fed round: > MIN_ROUND, and exact in binary


class Feed:
    """Drives a controller round by round with a given delivery rate."""

    def __init__(self, controller: RateController) -> None:
        self.rc = controller
        self.now = 0.0
        self.delivered = 0
        self.sent = 0

    def round(self, rate: float, *, queued: int, retransmits: int = 0, inflight: int = 0,
              offered: float | None = None) -> None:
        """One round delivering ``rate``; the path sent ``offered`` (default: its pacing
        rate while segments wait beyond the window, else what was delivered)."""
        assert STEP >= MIN_ROUND
        if offered is None:
            offered = max(rate, self.rc.pace_rate) if queued else rate
        self.now += STEP
        self.delivered += round(rate * STEP)
        self.sent += round(offered * STEP)
        assert self.rc.sample(self.now, self.delivered, queued, self.sent, retransmits,
                              inflight=inflight)


def phase(feed: Feed) -> RatePhase:
    """The controller's phase now (a call, so type checkers do not pin it)."""
    return feed.rc.phase


def controller(**options: float) -> Feed:
    rc = RateController(0.0, max_window=4096, queue_cap=8192, queue_delay=0.2, **options)  # type: ignore[arg-type]
    rc.on_rtt(round(RTT * 1000), 0.0)
    return Feed(rc)


def test_before_any_sample_the_initial_window_is_paced_over_one_rtt() -> None:
    feed = controller()
    assert feed.rc.window == INITIAL_WINDOW
    assert feed.rc.pace_rate == pytest.approx(INITIAL_WINDOW / RTT)
    assert feed.rc.half_rtt == pytest.approx(RTT / 2)


def test_startup_doubles_until_the_pipe_is_full_then_drains_and_probes() -> None:
    feed = controller()
    link = 10_000.0
    offered = INITIAL_WINDOW / RTT
    rounds = 0
    while phase(feed) is RatePhase.STARTUP:
        feed.round(min(offered, link), queued=100)
        offered = feed.rc.pace_rate
        rounds += 1
    assert rounds <= 5  # 1280 -> 2560 -> 5120 -> 10000 (full) -> out
    assert feed.rc.rate == pytest.approx(link)
    assert phase(feed) is RatePhase.DRAIN
    assert feed.rc.pace_rate == pytest.approx(0.75 * link)
    gains = []
    for _ in range(len(PROBE_CYCLE) + 1):
        feed.round(link, queued=100)
        gains.append(feed.rc.pace_rate / feed.rc.rate)
    assert phase(feed) is RatePhase.PROBE
    assert sorted(set(round(g, 2) for g in gains)) == [0.75, 1.0, 1.25]


def test_startup_does_not_end_while_the_flows_offer_less_than_it_would_send() -> None:
    # The scheduler keeps a few segments waiting (loaded), but the flows offer only what
    # the estimate already says: those rounds cannot show whether the link has more, so
    # startup holds until a round that sent 1.25x the estimate delivers no more.
    feed = controller()
    feed.round(2000.0, queued=5, offered=2000.0)
    estimate = feed.rc.rate
    for _ in range(10):
        feed.round(estimate, queued=5, offered=estimate)
    assert phase(feed) is RatePhase.STARTUP
    feed.round(estimate, queued=5, offered=STARTUP_GAIN * estimate)  # pushed, no more
    assert phase(feed) is RatePhase.DRAIN


def test_startup_ends_on_loss() -> None:
    feed = controller()
    feed.round(2000.0, queued=100)
    assert phase(feed) is RatePhase.STARTUP
    assert feed.rc.pace_rate == pytest.approx(STARTUP_GAIN * 2000.0)
    feed.round(3000.0, queued=100, retransmits=30)  # 10 % of the round sent again
    assert phase(feed) is RatePhase.DRAIN
    assert feed.rc.loss > 0.0


def test_app_limited_samples_never_lower_the_estimate() -> None:
    feed = controller()
    for _ in range(5):
        feed.round(8000.0, queued=50)  # busy: the link carries 8000/s
    assert feed.rc.rate == pytest.approx(8000.0)
    for _ in range(100):
        feed.round(100.0, queued=0)  # light use for 10 s: nothing waited
    assert feed.rc.rate == pytest.approx(8000.0)
    assert feed.rc.window >= 1.5 * 8000.0 * RTT - 1


def test_in_flight_below_one_pipe_is_app_limited_too() -> None:
    feed = controller()
    for _ in range(5):
        feed.round(8000.0, queued=50)
    pipe = 8000.0 * RTT
    for _ in range(3 * RATE_FILTER_ROUNDS):
        feed.round(2000.0, queued=0, inflight=int(pipe) - 1)  # offered less than a pipe
    assert feed.rc.rate == pytest.approx(8000.0)


def test_a_slow_link_fed_below_its_window_is_measured_not_assumed() -> None:
    # A 40 ms path on a link carrying 800 segments/s: the initial-window floor says
    # 1280/s.  The flow never fills the window (nothing waits beyond it), but it keeps
    # more than that pipe in flight, a queue in the network doubling the RTT: the link,
    # not the sender, limits delivery, so the estimate must come down to it.
    feed = controller()
    feed.round(20.0, queued=0)  # HELLOs only
    assert feed.rc.rate == pytest.approx(INITIAL_WINDOW / RTT)
    link = 800.0
    in_flight = round(link * 2 * RTT)  # 80 segments > the 64 the floor's pipe holds
    feed.round(link, queued=0, inflight=in_flight)  # the round's start is not known yet
    feed.round(link, queued=0, inflight=in_flight)
    assert feed.rc.rate == pytest.approx(link, rel=0.02)
    assert feed.rc.loaded_once


def test_a_link_that_really_slowed_is_followed_once_the_old_samples_age_out() -> None:
    feed = controller()
    for _ in range(5):
        feed.round(8000.0, queued=50)
    for _ in range(RATE_FILTER_ROUNDS - 1):
        feed.round(2000.0, queued=50)  # busy and slower: counts
    assert feed.rc.rate == pytest.approx(8000.0)  # the max filter still holds one
    feed.round(2000.0, queued=50)
    assert feed.rc.rate == pytest.approx(2000.0)


def test_light_traffic_on_a_fresh_path_never_measures_less_than_the_initial_window() -> None:
    feed = controller()
    feed.round(20.0, queued=0)  # HELLOs only
    assert feed.rc.rate == pytest.approx(INITIAL_WINDOW / RTT)


def test_an_idle_gap_is_not_a_sample() -> None:
    feed = controller()
    feed.round(5000.0, queued=10)
    rate = feed.rc.rate
    feed.now += 10.0  # idle 10 s, then one busy round
    assert not feed.rc.sample(feed.now, feed.delivered, 10, feed.sent, 0)
    assert feed.rc.rate == rate


def test_a_hint_seeds_and_caps_the_estimate() -> None:
    feed = controller(cap=3000.0, seed=3000.0)
    assert feed.rc.rate == pytest.approx(3000.0)
    for _ in range(10):
        feed.round(9000.0, queued=100)  # the link seems faster: the hint holds
    assert feed.rc.rate == pytest.approx(3000.0)
    assert feed.rc.pace_rate <= STARTUP_GAIN * 3000.0
    feed.rc.set_cap(1000.0)
    assert feed.rc.rate == pytest.approx(1000.0)


def test_queue_bound_is_one_pipe_plus_one_rtt_of_queue_once_out_of_startup() -> None:
    feed = controller()
    for _ in range(10):
        feed.round(10_000.0, queued=500)
    assert phase(feed) is not RatePhase.STARTUP
    pipe = 10_000.0 * RTT
    assert feed.rc.queue_limit == pytest.approx(pipe + 10_000.0 * RTT, abs=1)


def test_recent_rate_is_exact_and_falls_to_zero_when_idle() -> None:
    meter = RecentRate(0.0)
    total = 0
    for step in range(1, 31):  # 1000 bytes every 0.1 s for 3 s
        total += 1000
        meter.touch(total, step * 0.1)
    assert meter.rate_bps(total, 3.0) == pytest.approx(80_000, rel=0.05)
    assert meter.rate_bps(total, 3.0 + RECENT_RATE_WINDOW) == 0.0


def test_a_probe_that_finds_far_more_room_goes_back_to_startup() -> None:
    # Startup cut short by a loss burst at 1000/s on a link that carries 8000/s: probing at
    # +25 % per cycle of eight rounds would take ~80 rounds; back in startup it doubles.
    feed = controller()
    feed.round(1000.0, queued=100, retransmits=100)  # 10 % resent: startup ends
    assert phase(feed) is RatePhase.DRAIN
    link = 8000.0
    rounds = 0
    while feed.rc.rate < 0.9 * link:
        feed.round(min(feed.rc.pace_rate, link), queued=100, retransmits=100)
        rounds += 1
        assert rounds < 20, f"estimate {feed.rc.rate:.0f}/s after {rounds} rounds"
    # A full link seen by a probe round (it delivers the link, not 1.25x) stays in probing.
    for _ in range(3 * len(PROBE_CYCLE)):
        feed.round(link, queued=100, retransmits=100)
    assert phase(feed) is RatePhase.PROBE
