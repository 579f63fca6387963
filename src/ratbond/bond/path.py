"""One path of the bond: a KCP session over one WAN link, its liveness and counters.

Liveness rules (times are the shell's monotonic seconds):

* a path is **up** once the peer proved two-way reachability in the current session:
  a HELLO echoing one of our HELLOs of this session, or DATA (the peer sends DATA only
  on paths it holds up, i.e. after it got such an echo itself).  Mere arrival is not
  enough: with one direction dead, a path that came up on every peer HELLO would flap
  and swallow the flows hashed onto it.  The first HELLO of a session and any HELLO
  without an echo are answered at once, so both ends come up within about one and a
  half round trips;
* it goes **down** when nothing arrived for ``dead_after`` (silent); when the peer's
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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from ratbond import kcp as kcp_engines
from ratbond.bond import messages
from ratbond.bond.config import BondConfig

#: How often a path's delivery rate is sampled (seconds).
RATE_SAMPLE_INTERVAL: Final = 0.1
#: Floor of the time-based queue bound (segments): room to measure a rate from.
MIN_QUEUE_LIMIT: Final = 32
#: Time-based bound before the first rate sample: a new path starts like a slow start
#: instead of pushing a full window of segments into a link of unknown speed.
INITIAL_QUEUE_LIMIT: Final = 128

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


def conv_for(epoch: int, path_id: int) -> int:
    """KCP conversation id of session ``epoch`` of ``path_id``."""
    return ((epoch & 0xFFFF) << 16) | (path_id & 0xFFFF)


def epoch_newer(candidate: int, current: int) -> bool:
    """True when ``candidate`` follows ``current`` in 16-bit serial order."""
    return 0 < ((candidate - current) & 0xFFFF) < 0x8000


class Path:
    """State of one path; the :class:`~ratbond.bond.Bond` drives it and reads it."""

    __slots__ = (
        "_config",
        "_output",
        "_rate_at",
        "_rate_kcp",
        "_rate_mark",
        "_rate_waiting",
        "clock_ms",
        "confirmed_at",
        "control_messages",
        "conv",
        "down_reason",
        "epoch",
        "extra_segments",
        "hello_rtt_ms",
        "kcp",
        "last_heard",
        "limit",
        "min_rtt_ms",
        "next_hello",
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
        "send",
        "session_start_ms",
        "two_way",
        "tx_bytes",
        "tx_packets",
        "up",
        "waitsnd",
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
        self.rate = 0.0
        self.min_rtt_ms = 0
        cap = config.queue_limit
        self.limit = cap if config.send_queue_delay is None else min(cap, INITIAL_QUEUE_LIMIT)
        self._rate_at = now
        self._rate_mark = 0
        self._rate_waiting = 0
        self._rate_kcp = self.kcp

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

    def _new_kcp(self, epoch: int, now: float) -> kcp_engines.KCPEngine:
        config = self._config
        self.conv = conv_for(epoch, self.path_id)
        engine = kcp_engines.create(self.conv, self._output, config.kcp_engine)
        engine.nodelay(1, config.kcp_interval_ms, 2, 1)
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
        """Refresh the delivery rate and the time-based queue bound derived from it.

        The bound is rate * (min RTT + delay): the pipe's worth of segments plus
        ``delay`` of queue.  The minimum RTT, not srtt, or the queue we cause would
        feed back into the bound and grow it without end.  A sample counts only when at
        least :data:`MIN_QUEUE_LIMIT` segments waited at both ends of the interval: a
        trickle (HELLOs, light traffic) says nothing about what the link can carry.  A
        rate that merely reflects the sender's own pace is harmless: with delay >> RTT
        a path that is not the bottleneck grows its bound many-fold per sample.
        """
        elapsed = now - self._rate_at
        if elapsed < RATE_SAMPLE_INTERVAL:
            return
        kcp = self.kcp
        srtt = kcp.srtt
        if srtt > 0 and (srtt < self.min_rtt_ms or not self.min_rtt_ms):
            self.min_rtt_ms = srtt
        waiting = kcp.waitsnd()
        acked = self.tx_packets + self.control_messages + self.extra_segments - waiting
        loaded = waiting >= MIN_QUEUE_LIMIT and self._rate_waiting >= MIN_QUEUE_LIMIT
        sample = (acked - self._rate_mark) / elapsed
        self._rate_at = now
        self._rate_mark = acked
        self._rate_waiting = waiting
        if kcp is not self._rate_kcp:  # a new session: its queue started empty
            self._rate_kcp = kcp
            self.min_rtt_ms = 0
            return
        if not loaded:
            return
        if sample > self.rate:
            self.rate = sample  # up at once: more capacity is certain
        else:
            self.rate += (sample - self.rate) * 0.25  # down smoothed: one slow sample
        delay = self._config.send_queue_delay
        if delay is None or self.rate <= 0.0:
            return
        cap = self._config.queue_limit
        wanted = int(self.rate * (self.min_rtt_ms / 1000.0 + delay))
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

    def stalled(self, now: float) -> bool:
        """The peer is heard but has seen none of our HELLOs of the last ``dead_after``."""
        return now - self.confirmed_at > self._config.dead_after

    def failure(self, now: float) -> str | None:
        """Why this live path must go down now, or None while it is healthy."""
        config = self._config
        if self.last_heard is not None and now >= self.last_heard + config.dead_after:
            return DOWN_SILENT
        if self.kcp.state == -1:
            return DOWN_KCP_DEAD
        return None

    def deadline(self) -> float:
        """Earliest time at which :meth:`failure` or the HELLO timer may change."""
        if self.up and self.last_heard is not None:
            return min(self.next_hello, self.last_heard + self._config.dead_after)
        return math.inf if self.parked else self.next_hello

    @property
    def retransmits(self) -> int:
        return self.retransmits_before + self.kcp.retransmits
