"""Per-path rate control (pure): the capacity estimate and what derives from it.

KCP runs with ``nc=1`` (no congestion control of its own), so each path decides here how
much it may have in flight (KCP's send window), how fast new segments leave (pacing), how
many segments may wait (the queue bound the bond drops at) and KCP's minimum RTO.

The estimate follows BBR's ideas, in KCP segments per second:

* **delivery rate, max-filtered** (never below the initial window per RTT until the
  path was first seen busy) over the last :data:`RATE_FILTER_ROUNDS` accepted
  samples; a sample is one round (about one minimum RTT, at least :data:`MIN_ROUND`) of
  segments acknowledged per second.  A sample lower than the estimate counts only when
  the path was *not app-limited* at both ends of the round: segments waited beyond the
  window, or at least one estimated pipe (estimate x minimum RTT) was in flight, or a
  queue stood in the network (KCP's RTT well above the minimum, see
  :data:`QUEUE_RTT_GROWTH`) -- the sender offered the link at least what it carries, so
  delivering less is the link's doing.  Without the last two, a short-RTT slow link
  fed just below its window keeps the initial-window estimate (15 Mbit/s on a 10 Mbit/s
  link at 40 ms) and the scheduler overloads it.  A lull, an idle period or light use
  never shrinks the estimate: no "low use -> low estimate -> less use" loop.  Rejected
  samples do not age the filter either.
* **startup**: a fresh path paces at :data:`STARTUP_GAIN` times its estimate, which
  therefore doubles every round until the delivery rate stops growing by
  :data:`STARTUP_GROWTH` for :data:`STARTUP_FULL_ROUNDS` loaded rounds that sent
  :data:`STARTUP_GROWTH` times the estimate or more (the pipe is full; a round the flows
  did not fill shows nothing)
  or the round lost more than :data:`STARTUP_LOSS` of what it sent, or the RTT shows a
  queue building (:data:`STARTUP_RTT_GROWTH`); one draining round
  at :data:`DRAIN_GAIN` follows.
* **probing**: then the pacing gain cycles through :data:`PROBE_CYCLE`, one entry per
  round: a round at 1.25 shows any spare capacity (the higher sample always counts), the
  next at 0.75 drains the queue it built.  A probing round that delivered
  :data:`PROBE_RESTART_GROWTH` times the estimate or more goes back to startup: the
  estimate was far below the link (a path that left startup early would otherwise take
  seconds of +25 % cycles to reach it).
* RTT: minimum (over :data:`MIN_RTT_WINDOW` seconds) and smoothed, from KCP's ``srtt``;
  a loss fraction (retransmitted / sent, smoothed per round).

A rate hint (``cap``) bounds the estimate and the pacing; ``seed`` starts the estimate.
"""

from __future__ import annotations

import enum
import math
from typing import Final

#: Shortest round over which one delivery-rate sample is taken (seconds): KCP acks in
#: 10 ms ticks, so shorter rounds would measure the ticks, not the link.
MIN_ROUND: Final = 0.1
#: A round longer than this many round lengths spanned an idle period: not a sample.
IDLE_ROUNDS: Final = 4
#: Accepted samples the max filter keeps (about one second at MIN_ROUND).
RATE_FILTER_ROUNDS: Final = 10
#: Pacing gain in startup: the estimate doubles each round while the link has room.
STARTUP_GAIN: Final = 2.0
#: Startup ends when loaded rounds grow the estimate by less than this factor ...
STARTUP_GROWTH: Final = 1.25
#: ... this many times in a row ...
STARTUP_FULL_ROUNDS: Final = 1
#: ... or when a round's retransmissions exceed this fraction of what it sent.
STARTUP_LOSS: Final = 0.02
#: ... or when the smoothed RTT exceeds the minimum by this factor plus STARTUP_RTT_SLACK
#: (a queue is building at the bottleneck: the pipe is full before loss says so).
STARTUP_RTT_GROWTH: Final = 1.5
STARTUP_RTT_SLACK: Final = 0.01
#: A round counts as not app-limited when a queue stood in the network at both of its
#: ends: segments in flight and KCP's smoothed RTT above the minimum by this factor plus
#: QUEUE_RTT_SLACK (the link, busy for the whole round, delivered what it carries).
QUEUE_RTT_GROWTH: Final = 1.25
QUEUE_RTT_SLACK: Final = 0.005
#: Pacing gain of the round after startup: drains the queue startup built.
DRAIN_GAIN: Final = 0.75
#: Pacing gains of the steady state, one per round (probe up, drain, cruise).
PROBE_CYCLE: Final = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
#: A probing round that delivered this many times the estimate found far more room than
#: the estimate says (startup ended early: a loss burst, a retransmission storm while the
#: machine was busy): back to startup's doubling instead of +25 % per probe cycle.  A full
#: link delivers about 1.0 in a probing round (the extra 25 % only queues).
PROBE_RESTART_GROWTH: Final = 1.15
#: In-flight window in estimated bandwidth-delay products (a safety net: pacing is the
#: primary control); startup's is larger so pacing, not the window, limits its growth.
WINDOW_GAIN: Final = 1.5
STARTUP_WINDOW_GAIN: Final = 2.5
#: Window bounds in segments; the initial one applies until the first sample.
MIN_WINDOW: Final = 16
INITIAL_WINDOW: Final = 64
#: Floor of the queue bound (segments), and the bound before the first sample.
MIN_QUEUE_LIMIT: Final = 16
INITIAL_QUEUE_LIMIT: Final = 128
#: The queue beyond one pipe is bounded to one minimum RTT, at least this long (s).
MIN_QUEUE_DELAY: Final = 0.02
#: Minimum RTT samples older than this are forgotten (seconds): routes change.
MIN_RTT_WINDOW: Final = 10.0
#: Smoothing of srtt and loss (weight of a new sample).
SMOOTHING: Final = 0.125
#: KCP's minimum RTO in minimum RTTs, plus a slack for the shells' scheduling jitter.
RTO_FLOOR_RTTS: Final = 1.5
RTO_FLOOR_SLACK_MS: Final = 30
#: KCP's own RTO floors (ms), normal and nodelay mode.
KCP_MIN_RTO_MS: Final = 100
KCP_MIN_RTO_NODELAY_MS: Final = 30


class RatePhase(enum.Enum):
    """Where a path's rate control is: finding the link's rate, then holding and probing it."""

    STARTUP = "startup"
    DRAIN = "drain"
    PROBE = "probe"


def rto_floor_ms(min_rtt_ms: int, nodelay: bool) -> int:
    """Minimum RTO for a path: RTO_FLOOR_RTTS minimum RTTs plus RTO_FLOOR_SLACK_MS.

    Pacing keeps the WAN queue short, so an ACK much later than the minimum RTT is
    lost, not late; never below KCP's own floor.
    """
    kcp_floor = KCP_MIN_RTO_NODELAY_MS if nodelay else KCP_MIN_RTO_MS
    return max(kcp_floor, math.ceil(RTO_FLOOR_RTTS * min_rtt_ms) + RTO_FLOOR_SLACK_MS)


class RateController:
    """Capacity estimate of one path and the bounds derived from it (all pure state).

    The path feeds :meth:`on_rtt` and :meth:`sample` and reads :attr:`window`,
    :attr:`pace_rate` (segments/s, 0 = not paced), :attr:`queue_limit`,
    :attr:`seconds_per_segment` and :attr:`half_rtt` (seconds) on its hot path.
    """

    __slots__ = (
        "_cap",
        "_cycle",
        "_full_rounds",
        "_grown_from",
        "_max_window",
        "_min_rtt_at",
        "_nodelay",
        "_queue_cap",
        "_queue_delay",
        "_round_at",
        "_round_delivered",
        "_round_inflight",
        "_round_queued",
        "_round_retransmits",
        "_round_sent",
        "_round_standing",
        "_rtt_now",
        "_samples",
        "_slot",
        "adaptive",
        "half_rtt",
        "loaded_once",
        "loss",
        "min_rtt",
        "next_sample_at",
        "pace_rate",
        "phase",
        "queue_limit",
        "rate",
        "rto_floor",
        "seconds_per_segment",
        "srtt",
        "window",
    )

    def __init__(
        self,
        now: float,
        *,
        max_window: int,
        queue_cap: int,
        queue_delay: float | None,
        adaptive: bool = True,
        nodelay: bool = False,
        cap: float | None = None,
        seed: float | None = None,
    ) -> None:
        self._max_window = max_window
        self._queue_cap = queue_cap
        self._queue_delay = queue_delay
        self._nodelay = nodelay
        self._cap = cap if cap and cap > 0 else None
        self.adaptive = adaptive
        self.phase = RatePhase.STARTUP
        self._samples = [0.0] * RATE_FILTER_ROUNDS
        self._slot = 0
        self._cycle = 0
        self._full_rounds = 0
        self._grown_from = 0.0
        self.rate = 0.0  # segments/s; 0 = nothing measured yet
        self.min_rtt = 0.0  # seconds; 0 = unknown
        self._min_rtt_at = now
        self.srtt = 0.0
        self.loss = 0.0
        self.loaded_once = False
        self.rto_floor = rto_floor_ms(0, nodelay)
        self._round_at = now
        self.next_sample_at = now + MIN_ROUND
        self._round_delivered = 0
        self._round_inflight = 0
        self._round_queued = 0
        self._round_sent = 0
        self._round_retransmits = 0
        self._round_standing = False
        self._rtt_now = 0.0  # KCP's smoothed RTT as last reported (seconds)
        self.seconds_per_segment = 0.0
        self.half_rtt = 0.0
        self.pace_rate = 0.0
        self.window = INITIAL_WINDOW if adaptive else max_window
        self.queue_limit = queue_cap if queue_delay is None else min(queue_cap, INITIAL_QUEUE_LIMIT)
        if seed and seed > 0:
            self._accept(min(seed, self._cap or seed))
        self._update_bounds()

    # -- inputs ----------------------------------------------------------------------

    def on_rtt(self, srtt_ms: int, now: float) -> bool:
        """A smoothed RTT from KCP; True when the minimum RTT (and so the bounds) moved."""
        if srtt_ms <= 0:
            return False
        rtt = srtt_ms / 1000.0
        self._rtt_now = rtt
        self.srtt = rtt if not self.srtt else self.srtt + SMOOTHING * (rtt - self.srtt)
        if self.min_rtt and rtt >= self.min_rtt and now - self._min_rtt_at < MIN_RTT_WINDOW:
            return False
        changed = rtt != self.min_rtt
        self.min_rtt = rtt
        self._min_rtt_at = now
        self.next_sample_at = self._round_at + self.round_length()
        if changed:
            self.rto_floor = rto_floor_ms(srtt_ms, self._nodelay)
            self._update_bounds()
        return changed

    def round_length(self) -> float:
        """Seconds per delivery-rate sample."""
        return max(MIN_ROUND, self.min_rtt)

    def sample(self, now: float, delivered: int, queued: int, sent: int, retransmits: int,
               *, inflight: int = 0) -> bool:
        """End a round when one is due; True when the bounds changed.

        ``delivered``: segments acknowledged since the session began; ``queued``: segments
        waiting beyond the in-flight window now; ``sent`` and ``retransmits``: counters of
        segments handed to KCP and sent again, since the session began; ``inflight``:
        segments sent and not acknowledged now.
        """
        elapsed = now - self._round_at
        round_length = self.round_length()
        if elapsed < round_length:
            return False
        if elapsed > IDLE_ROUNDS * round_length:
            # The path was idle (no samples): start a fresh round instead of averaging
            # the idle time into one.
            self._start_round(now, delivered, queued, sent, retransmits, inflight=inflight,
                              standing=self._standing_queue(inflight))
            return False
        rate = (delivered - self._round_delivered) / elapsed
        pipe = self.rate * self.min_rtt
        standing = self._standing_queue(inflight)
        loaded = (min(queued, self._round_queued) > 0
                  or (pipe > 0.0 and min(inflight, self._round_inflight) >= pipe)
                  or (standing and self._round_standing))
        sent_now = sent - self._round_sent
        resent = retransmits - self._round_retransmits
        self._start_round(now, delivered, queued, sent, retransmits, inflight=inflight,
                          standing=standing)
        lost = resent / sent_now if sent_now > 0 else 0.0
        if sent_now > 0:
            self.loss += SMOOTHING * (min(1.0, lost) - self.loss)
        if self._cap is not None:
            rate = min(rate, self._cap)
        if loaded:
            self.loaded_once = True
        before = self.rate
        if rate > 0.0 and (rate > self.rate or loaded):
            self._accept(rate)
        # Did the path offer the link more than the estimate?  Only then does a round that
        # delivered no more show the pipe full; else the flows were the limit, not the link.
        pushed = before <= 0.0 or sent_now / elapsed >= STARTUP_GROWTH * before
        self._advance_phase(loaded, loaded and pushed, lost,
                            rate / before if before > 0.0 else 1.0)
        self._update_bounds()
        return True

    def _start_round(
        self, now: float, delivered: int, queued: int, sent: int, retransmits: int,
        *, inflight: int, standing: bool,
    ) -> None:
        """A round begins with these counters; ``standing``: a queue of ours stands in the
        network now."""
        self._round_at = now
        self.next_sample_at = now + self.round_length()
        self._round_delivered = delivered
        self._round_inflight = inflight
        self._round_standing = standing
        self._round_queued = queued
        self._round_sent = sent
        self._round_retransmits = retransmits

    def _standing_queue(self, inflight: int) -> bool:
        """A queue of ours stands in the network now (see :data:`QUEUE_RTT_GROWTH`)."""
        min_rtt = self.min_rtt
        return (inflight > 0 and min_rtt > 0.0
                and self._rtt_now > min_rtt * QUEUE_RTT_GROWTH + QUEUE_RTT_SLACK)

    def set_cap(self, cap: float | None) -> None:
        """A new rate hint: bound the estimate and the pacing by ``cap`` (None: no bound)."""
        self._cap = cap if cap and cap > 0 else None
        if self._cap is not None and self.rate > self._cap:
            self._samples = [min(sample, self._cap) for sample in self._samples]
            self.rate = max(self._samples)
        self._update_bounds()

    # -- internals -------------------------------------------------------------------

    def _accept(self, rate: float) -> None:
        samples = self._samples
        samples[self._slot] = rate
        self._slot = (self._slot + 1) % RATE_FILTER_ROUNDS
        best = max(samples)
        if not self.loaded_once and self.min_rtt:
            # Until the path was seen busy, light traffic (HELLOs, a trickle) measures
            # far less than the link: never assume less than the initial window per RTT.
            best = max(best, INITIAL_WINDOW / self.min_rtt)
            if self._cap is not None:
                best = min(best, self._cap)
        self.rate = best

    def _advance_phase(self, loaded: bool, pushed: bool, lost: float, growth: float) -> None:
        """``pushed``: the round was loaded and sent 1.25x the estimate or more."""
        phase = self.phase
        if phase is RatePhase.STARTUP:
            queueing = self.srtt > self.min_rtt * STARTUP_RTT_GROWTH + STARTUP_RTT_SLACK
            if (lost > STARTUP_LOSS or (loaded and queueing)) and self.rate > 0.0:
                self.phase = RatePhase.DRAIN
            elif self.rate >= self._grown_from * STARTUP_GROWTH:
                self._grown_from = self.rate
                self._full_rounds = 0
            elif pushed:
                self._full_rounds += 1
                if self._full_rounds >= STARTUP_FULL_ROUNDS:
                    self.phase = RatePhase.DRAIN
        elif phase is RatePhase.DRAIN:
            self.phase = RatePhase.PROBE
            self._cycle = len(PROBE_CYCLE) - 1  # cruise first, probe next
        elif (PROBE_CYCLE[self._cycle] > 1.0 and loaded and growth >= PROBE_RESTART_GROWTH
              and lost <= STARTUP_LOSS):
            self.phase = RatePhase.STARTUP
            self._grown_from = self.rate
            self._full_rounds = 0
        else:
            self._cycle = (self._cycle + 1) % len(PROBE_CYCLE)

    def pacing_gain(self) -> float:
        if self.phase is RatePhase.STARTUP:
            return STARTUP_GAIN
        if self.phase is RatePhase.DRAIN:
            return DRAIN_GAIN
        return PROBE_CYCLE[self._cycle]

    def _update_bounds(self) -> None:
        rate = self.rate
        min_rtt = self.min_rtt
        if rate <= 0.0:
            # Nothing measured: the initial window, paced over one RTT once one is known.
            if self.adaptive and min_rtt:
                self.pace_rate = self.window / min_rtt
            self.half_rtt = min_rtt / 2.0
            self.seconds_per_segment = min_rtt / self.window if min_rtt else 0.0
            return
        self.seconds_per_segment = 1.0 / rate
        self.half_rtt = min_rtt / 2.0
        pipe = rate * min_rtt
        if self.adaptive and min_rtt:
            startup = self.phase is RatePhase.STARTUP
            gain = STARTUP_WINDOW_GAIN if startup else WINDOW_GAIN
            floor = MIN_WINDOW if self.loaded_once else INITIAL_WINDOW
            self.window = min(self._max_window, max(floor, math.ceil(gain * pipe)))
            pace = rate * self.pacing_gain()
            if self._cap is not None and not startup:
                pace = min(pace, self._cap)
            self.pace_rate = pace
        delay = self._queue_delay
        if delay is None:
            return
        cap = self._queue_cap
        waiting = rate * min(delay, max(min_rtt, MIN_QUEUE_DELAY))
        startup = self.adaptive and self.phase is RatePhase.STARTUP
        base = self.window if startup else max(pipe, MIN_WINDOW)
        wanted = math.ceil(base + waiting)
        self.queue_limit = max(min(cap, MIN_QUEUE_LIMIT), min(cap, wanted))


#: Length of one bucket of :class:`RecentRate` (seconds).
RECENT_RATE_WINDOW: Final = 1.0


class RecentRate:
    """A byte counter's recent rate (bit/s) that falls to 0 when the counter stops.

    :meth:`touch` on every activity (cheap), :meth:`rate_bps` when asked: the rate
    covers the previous bucket of :data:`RECENT_RATE_WINDOW` and the current one, and
    needs no timer of its own (an idle counter is simply not touched).
    """

    __slots__ = ("_last_at", "_last_bytes", "_mark_at", "_mark_bytes", "_prev_at", "_prev_bytes")

    def __init__(self, now: float) -> None:
        self._prev_at = self._mark_at = self._last_at = now
        self._prev_bytes = self._mark_bytes = self._last_bytes = 0

    def touch(self, total_bytes: int, now: float) -> None:
        """The counter is ``total_bytes`` at ``now``."""
        if now - self._mark_at >= RECENT_RATE_WINDOW:
            if self._last_at <= now - RECENT_RATE_WINDOW:
                # Nothing moved since the last touch: the old buckets are not recent.
                self._prev_at, self._prev_bytes = self._last_at, self._last_bytes
            else:
                self._prev_at, self._prev_bytes = self._mark_at, self._mark_bytes
            self._mark_at, self._mark_bytes = now, total_bytes
        self._last_at, self._last_bytes = now, total_bytes

    def rate_bps(self, total_bytes: int, now: float) -> float:
        """Bits per second recently, ``total_bytes`` being the counter now."""
        if total_bytes == self._last_bytes and now - self._last_at >= RECENT_RATE_WINDOW:
            return 0.0
        self.touch(total_bytes, now)
        elapsed = now - self._prev_at
        if elapsed <= 0:
            return 0.0
        return (total_bytes - self._prev_bytes) * 8 / elapsed
