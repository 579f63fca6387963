"""One path of the bond: a KCP session over one WAN link, its liveness and counters.

Liveness rules (times are the shell's monotonic seconds):

* a path is **up** once the peer proved two-way reachability in the current session:
  a HELLO echoing one of our HELLOs of this session, or DATA (the peer sends DATA only
  on paths it holds up, i.e. after it got such an echo itself).  Mere arrival is not
  enough: with one direction dead, a path that came up on every peer HELLO would flap
  and swallow the flows hashed onto it.  The first HELLO of a session and any HELLO
  without an echo are answered at once, so both ends come up within about one and a
  half round trips;
* it goes **down** when nothing arrived for its silence limit, ``dead_after`` or
  :data:`SILENCE_RTTS` round trips if that is longer (so a satellite or bufferbloated LTE
  path, whose RTT alone can exceed a fast ``dead_after``, is not declared dead while its
  packets are merely late) (silent); when the peer's
  HELLOs keep arriving but echo none of our HELLOs sent in the last ``dead_after``
  (our send direction is stuck: a queue that does not drain, or one-way loss; judged at
  each peer HELLO, so a silent path always goes down by the exact silence timer); when
  KCP gave a segment up (``state == -1``); on LINKDOWN or CLOSE from the peer; or when
  the shell removes it;
* HELLO goes every ``hello_interval`` on every path, idle or not.  It travels inside KCP,
  so it is authenticated and ordered with the data and tells the peer which session is
  current; behind a full queue it waits at most the queue bound (see
  :class:`~ratbond.bond.config.BondConfig`), and the stall rule above catches a queue
  that never drains.

Sessions and epochs: the KCP ``conv`` of a path is ``epoch << 16 | path_id``.  Each time
a path goes down it restarts with a fresh KCP session under the next epoch and keeps
probing with HELLOs.  A receiver that sees a newer epoch (16-bit serial arithmetic) for a
path drops its own session and adopts the peer's; older epochs are stale datagrams and
dropped.  Both ends therefore converge on the newest session without a handshake, and a
datagram of a dead session can never corrupt a fresh one.  A down path whose probe is
still unacknowledged at the next HELLO tick restarts again, so a long outage never builds
a backlog of stale HELLOs.  A path taken down by the peer's LINKDOWN is *parked*: it gets
a fresh session but stays quiet until the peer (which owns the link and will probe when
the link returns) speaks again, so the two ends start their sessions in step.

Congestion: KCP runs with ``nc=1`` (no congestion control of its own), so the path
keeps its sending in line with the link (see :meth:`Path.sample_rate`): a delivery-rate
estimate (max filter over about a second), an in-flight window of 1.25 bandwidth-delay
products, pacing of new segments over one minimum RTT
(:meth:`Path.pace` / :meth:`Path.paced` around every KCP flush), and an RTO floor of
1.5 minimum RTTs (:func:`rto_floor_ms`).  What the window holds back waits in KCP's send
queue, bounded in time by the queue bound; the bond drops at the bound, which is where
the tunnelled TCP flows get their congestion signal, instead of the WAN tail-dropping
segments that KCP then retransmits at the expense of goodput.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from ratbond import kcp as kcp_engines
from ratbond.bond import messages
from ratbond.bond.config import BondConfig

#: A path is never declared silent before this many of its current round trips passed.
SILENCE_RTTS: Final = 4

#: A down path's probe waits this many known round trips before it is retried.
PROBE_RTTS: Final = 2.5
#: The longest wait for the answer to a probe on a path whose RTT was never measured (s).
PROBE_PATIENCE_MAX: Final = 4.0

#: How often a path's delivery rate is sampled (seconds).
RATE_SAMPLE_INTERVAL: Final = 0.25
#: Floor of the time-based queue bound (segments): room to measure a rate from.
MIN_QUEUE_LIMIT: Final = 32
#: Time-based bound before the first rate sample: a new path starts like a slow start
#: instead of pushing a full window of segments into a link of unknown speed.
INITIAL_QUEUE_LIMIT: Final = 128
#: Delivery-rate samples the max filter keeps (one per RATE_SAMPLE_INTERVAL: ~1 s).
RATE_WINDOW: Final = 4
#: In-flight window in pipes (rate * min RTT): a quarter of a pipe queues at the
#: bottleneck, enough to keep it busy and to show more capacity when there is some (the
#: rate estimate then grows by up to this factor per sample), while a startup at twice
#: the pipe overflowed buffers shorter than the RTT in the lab and stalled the path on
#: lost retransmissions.
WINDOW_GAIN: Final = 1.25
#: Window bounds in segments; the initial one is also the floor until the path was
#: first seen saturated (light traffic measures a rate far below the link's).
MIN_WINDOW: Final = 16
INITIAL_WINDOW: Final = 64
#: Pacing budget cap: this many seconds of the pacing rate, plus MIN_BURST segments
#: (two KCP ticks: the budget must cover the gap between flushes).
PACE_BURST: Final = 0.02
MIN_BURST: Final = 4
#: KCP's minimum RTO in minimum RTTs, plus a slack for the shells' scheduling jitter.
RTO_FLOOR_RTTS: Final = 1.5
RTO_FLOOR_SLACK_MS: Final = 30
#: Rate assumed before the first sample (packets/s): INITIAL_WINDOW per 100 ms.
INITIAL_RATE: Final = 640.0

DOWN_SILENT: Final = "silent"
DOWN_STALLED: Final = "send stalled"
DOWN_KCP_DEAD: Final = "kcp dead link"
DOWN_PEER_LINKDOWN: Final = "peer reported link down"
DOWN_PEER_CLOSED: Final = "peer closed"

_U32: Final = 0xFFFFFFFF
_HALF_U32: Final = 1 << 31


def to_ms(now: float) -> int:
    """KCP's integer milliseconds for the shell's float seconds.

    Rounded, not truncated: a deadline handed out as ``ms / 1000`` must map back to the
    same millisecond, or a timer due "now" would never fire.
    """
    return round(now * 1000)


def rto_floor_ms(min_rtt_ms: int, nodelay: bool) -> int:
    """Minimum RTO for a path: RTO_FLOOR_RTTS minimum RTTs plus RTO_FLOOR_SLACK_MS.

    The adaptive window keeps the WAN queue near a quarter of the minimum RTT, so an
    ACK later than that is lost, not late; never below KCP's own floor.
    """
    kcp_floor = 30 if nodelay else 100
    return max(kcp_floor, math.ceil(RTO_FLOOR_RTTS * min_rtt_ms) + RTO_FLOOR_SLACK_MS)


def conv_for(epoch: int, path_id: int) -> int:
    """KCP conversation id of session ``epoch`` of ``path_id``."""
    return ((epoch & 0xFFFF) << 16) | (path_id & 0xFFFF)


def epoch_newer(candidate: int, current: int) -> bool:
    """True when ``candidate`` follows ``current`` in 16-bit serial order."""
    return 0 < ((candidate - current) & 0xFFFF) < 0x8000


class Path:
    """State of one path; the :class:`~ratbond.bond.Bond` drives it and reads it."""

    __slots__ = (
        "_budget",
        "_config",
        "_has_span",
        "_loaded_once",
        "_output",
        "_paced_at",
        "_paced_span",
        "_rate_at",
        "_rate_kcp",
        "_rate_mark",
        "_rate_samples",
        "_rate_slot",
        "_rate_waiting",
        "clock_ms",
        "confirmed_at",
        "control_messages",
        "conv",
        "down_reason",
        "epoch",
        "extra_segments",
        "half_rtt",
        "hello_rtt_ms",
        "kcp",
        "last_heard",
        "limit",
        "min_rtt_ms",
        "next_hello",
        "pace_rate",
        "parked",
        "path_id",
        "payload_max",
        "peer_hello_at_ms",
        "peer_rx_packets",
        "peer_sent_ms",
        "rate",
        "restarts",
        "retransmits_before",
        "rx_bytes",
        "rx_packets",
        "seconds_per_segment",
        "send",
        "session_start_ms",
        "two_way",
        "tx_bytes",
        "tx_packets",
        "unanswered_probes",
        "up",
        "waitsnd",
        "window",
    )

    def __init__(
        self,
        path_id: int,
        epoch: int,
        config: BondConfig,
        output: Callable[[bytes], object],
        now: float,
    ) -> None:
        self.path_id = path_id
        self._config = config
        self._output = output
        self.up = False
        self.down_reason: str | None = None
        self.last_heard: float | None = None
        self.confirmed_at = now
        self.hello_rtt_ms: int | None = None
        self.tx_packets = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.rx_bytes = 0
        self.peer_rx_packets = 0
        self.restarts = 0
        self.unanswered_probes = 0
        self.retransmits_before = 0
        self.epoch = epoch
        self.conv = 0
        self.next_hello = now
        self.peer_sent_ms: int | None = None
        self.peer_hello_at_ms = 0
        self.session_start_ms = to_ms(now)
        self.two_way = False
        self.parked = False
        self.clock_ms = -1  # last time given to kcp.update() by Bond.receive
        self.kcp: kcp_engines.KCPEngine = self._new_kcp(epoch, now)
        self.send = self.kcp.send
        self.waitsnd = self.kcp.waitsnd
        # Delivery rate: segments handed to KCP minus those still waiting, per second.
        self.control_messages = 0
        self.extra_segments = 0  # beyond one per DATA message (fragmented packets)
        self.payload_max = self.kcp.mss - messages.DATA_HEADER.size
        self._rate_at = now
        self._rate_mark = 0
        self._rate_waiting = 0
        self._rate_kcp = self.kcp
        self._rate_slot = 0
        self._paced_at = now
        self._paced_span = 0
        self._has_span = False
        self._budget = 0.0
        self._reset_estimates()

    def restart(self, epoch: int, now: float) -> None:
        """Drop the KCP session (and what it held) and start session ``epoch``."""
        self.retransmits_before += self.kcp.retransmits
        self.restarts += 1
        self.kcp = self._new_kcp(epoch, now)
        self.send = self.kcp.send
        self.waitsnd = self.kcp.waitsnd
        self.epoch = epoch
        self.peer_sent_ms = None
        self.next_hello = now
        self.confirmed_at = now
        self.session_start_ms = to_ms(now)
        self.two_way = False
        self._reset_estimates()

    def _reset_estimates(self) -> None:
        """A new session starts empty and measures its link afresh."""
        self.rate = 0.0
        self.min_rtt_ms = 0
        self._rate_samples: list[float] = [0.0] * RATE_WINDOW
        self._loaded_once = False
        # Inputs of the spraying scheduler's delivery-time estimate (seconds).
        self.seconds_per_segment = 1.0 / INITIAL_RATE
        self.half_rtt = 0.0
        self.pace_rate = 0.0  # segments/s; 0 = not paced (no rate measured yet)
        config = self._config
        self.window = INITIAL_WINDOW if config.adaptive_window else config.snd_wnd
        self._apply_window()
        cap = config.queue_limit
        self.limit = cap if config.send_queue_delay is None else min(cap, INITIAL_QUEUE_LIMIT)

    def _apply_window(self) -> None:
        kcp = self.kcp
        self._has_span = hasattr(type(kcp), "send_span")
        kcp.wndsize(max(1, self._span(kcp) + self.window - kcp.inflight), 0)

    def _span(self, kcp: kcp_engines.KCPEngine) -> int:
        """KCP's window counts from the oldest unacknowledged segment to the next new one.

        After a loss that span includes every segment acknowledged behind the hole, so a
        window of ``self.window`` *segments in flight* is ``span + window - inflight``.
        Engines without ``send_span`` count in flight only (a hole then stalls new data
        until its retransmission is acknowledged).
        """
        if self._has_span:
            return int(getattr(kcp, "send_span"))  # noqa: B009 - optional engine API
        return kcp.inflight

    def pace(self, now: float) -> None:
        """Before KCP may flush: open its window to what may leave now.

        That is the room in the in-flight window and, once a rate is known, no more than
        the pacing budget: KCP sends whatever its window allows at once, and after a
        hole is filled the window opens by dozens of segments in one go, a burst that
        overflows a short WAN buffer.  The budget grows at :attr:`pace_rate` (capped at
        :data:`PACE_BURST` seconds' worth plus :data:`MIN_BURST` segments).
        """
        kcp = self.kcp
        inflight = kcp.inflight
        span = self._span(kcp)
        self._paced_span = span
        room = self.window - inflight
        rate = self.pace_rate
        if rate:
            budget = self._budget + (now - self._paced_at) * rate
            burst = rate * PACE_BURST + MIN_BURST
            self._budget = budget = burst if budget > burst else budget
            if budget < room:
                room = int(budget)
        self._paced_at = now
        kcp.wndsize(span + room if room > 0 else max(1, span), 0)

    def paced(self) -> None:
        """After a flush: charge the budget with the new segments it sent."""
        if self.pace_rate:
            sent = self._span(self.kcp) - self._paced_span
            if sent > 0:
                self._budget -= sent

    def _new_kcp(self, epoch: int, now: float) -> kcp_engines.KCPEngine:
        config = self._config
        self.conv = conv_for(epoch, self.path_id)
        engine = kcp_engines.create(self.conv, self._output, config.kcp_engine)
        engine.nodelay(1 if config.kcp_nodelay else 0, config.kcp_interval_ms, 2, 1)
        engine.wndsize(config.snd_wnd, config.rcv_wnd)
        engine.setmtu(config.kcp_mtu)
        engine.set_dead_link(config.kcp_dead_link)
        engine.update(to_ms(now))
        return engine

    def send_control(self, message: bytes) -> None:
        """Queue a bond control message (never refused: it bypasses the queue bound)."""
        self.kcp.send(message)
        self.control_messages += 1

    def count_fragments(self, size: int) -> None:
        """Account a DATA packet of ``size`` bytes that KCP splits into several segments."""
        self.extra_segments += (size + messages.DATA_HEADER.size - 1) // self.kcp.mss

    def sample_rate(self, now: float) -> None:
        """Refresh the delivery rate and what derives from it: window and queue bound.

        KCP runs without congestion control, so whatever it holds goes out at once.  The
        path therefore caps what is *in flight* (KCP's send window) at ``gain * rate *
        min RTT``: the link's pipe plus a little, so the WAN buffer never overflows
        (overflow means retransmissions that waste the link) and the rest waits here,
        where the queue bound turns excess into early drops the flows' TCP reacts to.

        The rate is the maximum of the last :data:`RATE_WINDOW` samples of acknowledged
        segments per second.  A sample above the estimate always counts (the link
        carried it); a lower one only when the window was full throughout (the path was
        the bottleneck, not the sender), so a lull never shrinks the window.  The
        minimum RTT, not srtt, or the queue we cause would feed back into the window.
        The queue bound is the window plus ``send_queue_delay`` worth of segments.
        """
        elapsed = now - self._rate_at
        if elapsed < RATE_SAMPLE_INTERVAL:
            return
        kcp = self.kcp
        srtt = kcp.srtt
        if srtt > 0 and (srtt < self.min_rtt_ms or not self.min_rtt_ms):
            self.min_rtt_ms = srtt
            self.half_rtt = srtt / 2000.0
            self._set_rto_floor(kcp)
        waiting = kcp.waitsnd()
        acked = self.tx_packets + self.control_messages + self.extra_segments - waiting
        sample = (acked - self._rate_mark) / elapsed
        # Window full at both ends of the interval (in flight == window, more waiting).
        full = self.window if self._config.adaptive_window else MIN_QUEUE_LIMIT
        loaded = min(waiting, self._rate_waiting) >= full
        self._rate_at = now
        self._rate_mark = acked
        self._rate_waiting = waiting
        if kcp is not self._rate_kcp:  # a new session: its queue started empty
            self._rate_kcp = kcp
            return
        if not loaded and sample <= self.rate:
            return
        samples = self._rate_samples
        samples[self._rate_slot] = sample
        self._rate_slot = (self._rate_slot + 1) % RATE_WINDOW
        self.rate = max(samples)
        if self.rate <= 0.0:
            return
        self.seconds_per_segment = 1.0 / self.rate
        if loaded:
            self._loaded_once = True
        self._update_bounds()

    def _set_rto_floor(self, kcp: kcp_engines.KCPEngine) -> None:
        """Raise KCP's minimum RTO to :func:`rto_floor_ms` of the path's minimum RTT.

        KCP's own floor is fixed (30 or 100 ms) while its RTO tracks srtt + 4 rttvar,
        which hugs the RTT once the window keeps the queue steady: any scheduling hiccup
        then fires the RTO for a whole window of segments that were not lost (measured:
        a third of all segments on a 120 ms path).  Engines without ``set_min_rto``
        keep their floor.
        """
        set_min_rto = getattr(kcp, "set_min_rto", None)
        if set_min_rto is not None:
            set_min_rto(rto_floor_ms(self.min_rtt_ms, self._config.kcp_nodelay))

    def _update_bounds(self) -> None:
        config = self._config
        pipe = self.rate * self.min_rtt_ms / 1000.0
        if config.adaptive_window and self.min_rtt_ms:
            floor = MIN_WINDOW if self._loaded_once else INITIAL_WINDOW
            window = min(config.snd_wnd, max(floor, math.ceil(WINDOW_GAIN * pipe)))
            # Pace the window over one minimum RTT (WINDOW_GAIN * rate above the floor).
            self.pace_rate = window * 1000.0 / self.min_rtt_ms
            if window != self.window:
                self.window = window
                self._apply_window()
        delay = config.send_queue_delay
        if delay is None:
            return
        cap = config.queue_limit
        base = self.window if config.adaptive_window else pipe
        wanted = int(base + self.rate * delay)
        self.limit = max(min(cap, MIN_QUEUE_LIMIT), min(cap, wanted))

    def hello(self, now: float, sprays: bool) -> bytes:
        """The HELLO to send now; schedules the next one."""
        now_ms = to_ms(now)
        flags = messages.FLAG_SPRAYS if sprays else 0
        echo = delay = 0
        if self.peer_sent_ms is not None:
            flags |= messages.FLAG_ECHO
            echo = self.peer_sent_ms
            delay = now_ms - self.peer_hello_at_ms
        self.next_hello = now + self._config.hello_interval
        return messages.encode_hello(messages.Hello(flags, now_ms, echo, delay, self.rx_packets))

    def on_hello(self, hello: messages.Hello, now: float) -> None:
        """Record the peer's timestamps; take an RTT sample from its echo of ours.

        RTT = (now - our sent_ms echoed) - how long the peer held it, so the two clocks
        never need to agree; it includes time spent in either KCP queue, which is the
        latency packets see (KCP's ``srtt`` gives the network part).  An echo of a HELLO
        from this session proves two-way reachability (:attr:`two_way`).
        """
        now_ms = to_ms(now)
        self.peer_sent_ms = hello.sent_ms
        self.peer_hello_at_ms = now_ms
        self.peer_rx_packets = hello.rx_packets
        if not hello.has_echo:
            return
        elapsed = (now_ms - hello.echo_ms) & _U32
        if elapsed >= _HALF_U32:
            return  # not one of our timestamps: ignore the echo
        rtt = elapsed - hello.echo_delay_ms
        if rtt >= 0:
            self.hello_rtt_ms = rtt
        sent_ms = now_ms - elapsed
        self.confirmed_at = max(self.confirmed_at, sent_ms / 1000.0)
        if sent_ms >= self.session_start_ms:
            self.two_way = True
            self.unanswered_probes = 0

    def probe_deadline(self) -> float:
        """When the unanswered probe of this down path may be given up for a fresh one.

        Retrying sooner than the path's round trip would restart the session before any
        answer could arrive, and a long path (satellite, a loaded LTE link) would never come
        back.  With the RTT known from before the outage the probe gets 2.5 of them; on a path
        never measured, the patience doubles with each unanswered probe (capped).
        """
        hello = self._config.hello_interval
        if self.hello_rtt_ms:
            patience = max(hello, PROBE_RTTS * self.hello_rtt_ms / 1000.0)
        else:
            patience = min(hello * 2.0 ** self.unanswered_probes, PROBE_PATIENCE_MAX)
        return self.session_start_ms / 1000.0 + patience

    def silence_limit(self) -> float:
        """Seconds of silence after which the path is dead: ``dead_after``, stretched to
        :data:`SILENCE_RTTS` times the path's current RTT on slow, deep-buffered links."""
        rtt_ms = max(self.hello_rtt_ms or 0, self.kcp.srtt)
        return max(self._config.dead_after, SILENCE_RTTS * rtt_ms / 1000.0)

    def stalled(self, now: float) -> bool:
        """The peer is heard but has seen none of our HELLOs of the last silence limit."""
        return now - self.confirmed_at > self.silence_limit()

    def failure(self, now: float) -> str | None:
        """Why this live path must go down now, or None while it is healthy."""
        if self.last_heard is not None and now >= self.last_heard + self.silence_limit():
            return DOWN_SILENT
        if self.kcp.state == -1:
            return DOWN_KCP_DEAD
        return None

    def deadline(self) -> float:
        """Earliest time at which :meth:`failure` or the HELLO timer may change."""
        if self.up and self.last_heard is not None:
            return min(self.next_hello, self.last_heard + self.silence_limit())
        return math.inf if self.parked else self.next_hello

    @property
    def retransmits(self) -> int:
        return self.retransmits_before + self.kcp.retransmits
