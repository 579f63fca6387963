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

States (:class:`PathState`, changed only through :meth:`Path.enter`, checked against
:data:`TRANSITIONS`): PROBING (a session whose two-way reachability is not proven yet),
UP, PARKED (a fresh session kept quiet until the peer speaks) and CLOSED (removed, or the
bond closed).  "Down" is PROBING or PARKED with a ``down_reason``.

Congestion: KCP runs with ``nc=1`` (no congestion control of its own), so each path's
:class:`~ratbond.bond.rate.RateController` sets its in-flight window, pacing rate, queue
bound and RTO floor from a capacity estimate that cannot collapse; :meth:`Path.flush`
opens KCP's window by what pacing allows before every KCP update and charges it after.

Resend on death: the path keeps every DATA message it handed to KCP until KCP's
cumulative acknowledgement (``snd_una``) passes it, so a path that dies can give back
what may not have arrived (:meth:`Path.unacknowledged`); the receiver drops duplicates.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Final

from ratbond import kcp as kcp_engines
from ratbond.bond import messages
from ratbond.bond.config import BondConfig, LinkRate
from ratbond.bond.rate import (
    INITIAL_QUEUE_LIMIT,
    INITIAL_WINDOW,
    MIN_QUEUE_LIMIT,
    MIN_WINDOW,
    WINDOW_GAIN,
    RateController,
    RecentRate,
    rto_floor_ms,
)

__all__ = [
    "DOWN_KCP_DEAD",
    "DOWN_PEER_CLOSED",
    "DOWN_PEER_LINKDOWN",
    "DOWN_SILENT",
    "DOWN_STALLED",
    "INITIAL_QUEUE_LIMIT",
    "INITIAL_WINDOW",
    "MIN_BURST",
    "MIN_QUEUE_LIMIT",
    "MIN_WINDOW",
    "PACE_BURST",
    "TRANSITIONS",
    "WINDOW_GAIN",
    "IllegalTransitionError",
    "LinkRate",
    "Path",
    "PathState",
    "conv_for",
    "epoch_newer",
    "rto_floor_ms",
    "to_ms",
]

#: A path is never declared silent before this many of its current round trips passed.
SILENCE_RTTS: Final = 4

#: A down path's probe waits this many known round trips before it is retried.
PROBE_RTTS: Final = 2.5
#: The longest wait for the answer to a probe on a path whose RTT was never measured (s).
PROBE_PATIENCE_MAX: Final = 4.0

#: Pacing budget cap: this many seconds of the pacing rate, plus MIN_BURST segments
#: (two KCP ticks: the budget must cover the gap between flushes).
PACE_BURST: Final = 0.02
MIN_BURST: Final = 4
#: Bits per KCP segment when a rate in bit/s is turned into segments/s (full segments).
_BITS_PER_BYTE: Final = 8

DOWN_SILENT: Final = "silent"
DOWN_STALLED: Final = "send stalled"
DOWN_KCP_DEAD: Final = "kcp dead link"
DOWN_PEER_LINKDOWN: Final = "peer reported link down"
DOWN_PEER_CLOSED: Final = "peer closed"
DOWN_CLOSED: Final = "closed"

_U32: Final = 0xFFFFFFFF
_HALF_U32: Final = 1 << 31
_DATA_KINDS: Final = frozenset({messages.DATA, messages.EXPRESS})
#: A path with no cumulative ACK and nothing heard for this many smoothed RTTs (plus
#: HEDGE_SLACK seconds, for KCP ticks and scheduling jitter) is stalled: hedged.
STALL_RTTS: Final = 3.0
HEDGE_SLACK: Final = 0.03
#: The record of sent messages is compacted once this many at its head are acknowledged.
COMPACT_AFTER: Final = 1024


class PathState(enum.Enum):
    """Where a path is in its life; see the module docstring."""

    PROBING = "probing"
    UP = "up"
    PARKED = "parked"
    CLOSED = "closed"


#: Allowed state changes (a restart under a new epoch may keep the state).
TRANSITIONS: Final[dict[PathState, frozenset[PathState]]] = {
    PathState.PROBING: frozenset(
        {PathState.PROBING, PathState.UP, PathState.PARKED, PathState.CLOSED}
    ),
    PathState.UP: frozenset({PathState.UP, PathState.PROBING, PathState.PARKED, PathState.CLOSED}),
    PathState.PARKED: frozenset({PathState.PARKED, PathState.PROBING, PathState.CLOSED}),
    PathState.CLOSED: frozenset({PathState.CLOSED}),
}


class IllegalTransitionError(RuntimeError):
    """A bond bug: a path was asked to change state in a way :data:`TRANSITIONS` forbids."""


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
        "_budget",
        "_config",
        "_output",
        "_paced_at",
        "_paced_span",
        "ack_stalled",
        "backup",
        "busy_since",
        "clock_ms",
        "confirmed_at",
        "control_messages",
        "conv",
        "down_reason",
        "epoch",
        "half_rtt",
        "head_moved",
        "hedged",
        "hello_rtt_ms",
        "kcp",
        "last_heard",
        "limit",
        "mss",
        "next_hello",
        "outstanding_since",
        "pace_rate",
        "path_id",
        "payload_max",
        "peer_backup",
        "peer_hello_at_ms",
        "peer_receive_bps",
        "peer_rx_packets",
        "peer_sent_ms",
        "rate_hint",
        "rc",
        "remember",
        "restarts",
        "retransmits_before",
        "rx_bytes",
        "rx_meter",
        "rx_packets",
        "seconds_per_segment",
        "segments",
        "send",
        "sent",
        "sent_base",
        "sent_head",
        "session_start_ms",
        "single",
        "state",
        "two_way",
        "tx_bytes",
        "tx_meter",
        "tx_packets",
        "unanswered_probes",
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
        *,
        backup: bool = False,
        rate_hint: LinkRate | None = None,
    ) -> None:
        self.path_id = path_id
        self._config = config
        self._output = output
        self.state = PathState.PROBING
        self.backup = backup
        self.rate_hint = rate_hint
        self.peer_backup = False
        self.peer_receive_bps = 0.0
        self.down_reason: str | None = None
        self.last_heard: float | None = None
        self.confirmed_at = now
        self.hello_rtt_ms: int | None = None
        self.tx_packets = 0
        self.tx_bytes = 0
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_meter = RecentRate(now)
        self.rx_meter = RecentRate(now)
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
        self.clock_ms = -1  # last time given to kcp.update() by Path.flush
        self.control_messages = 0
        self.kcp: kcp_engines.KCPEngine = self._new_kcp(epoch, now)
        self.send = self.kcp.send
        self.waitsnd = self.kcp.waitsnd
        self.payload_max = self.kcp.mss - messages.DATA_HEADER.size
        # Segments handed to this session's KCP (its next sn), and every message (DATA and
        # control) handed to it: those from ``sent[sent_head]`` on are not cumulatively
        # acknowledged yet, the first of them starting at segment ``sent_base``.  A list
        # with a head index, so that trimming is a step, not a pop per message, while
        # every message is one segment (``single``).
        self.segments = 0
        self.sent: list[bytes] = []
        self.remember = self.sent.append
        self.sent_head = 0
        self.sent_base = 0
        self.single = True
        # Hedging (see stuck()): messages before ``sent[hedged]`` were sent again on
        # another path already; ``outstanding_since`` is when the oldest unacknowledged
        # one became the oldest (None: nothing outstanding, or not looked at since);
        # ``head_moved`` says the cumulative ACK advanced; an ``ack_stalled`` path (gone
        # silent) takes no new DATA until its ACKs resume.
        self.hedged = 0
        self.outstanding_since: float | None = None
        self.head_moved = False
        self.ack_stalled = False
        self.mss = self.kcp.mss
        # When segments went in flight after none were (None: nothing in flight).
        self.busy_since: float | None = None
        self._paced_at = now
        self._paced_span = 0
        self._budget = 0.0
        self._reset_estimates(now)

    # -- state -----------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.state is PathState.UP

    @property
    def parked(self) -> bool:
        return self.state is PathState.PARKED

    def enter(self, state: PathState, reason: str | None = None) -> None:
        """The one place a path's state changes; ``reason`` says why it is not up."""
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransitionError(
                f"path {self.path_id}: {self.state.value} -> {state.value}"
            )
        self.state = state
        if state is PathState.UP:
            self.down_reason = None
        elif reason is not None:
            self.down_reason = reason

    def heard(self, now: float) -> None:
        """An authenticated datagram of this session arrived: the peer speaks on it."""
        self.last_heard = now
        if self.state is PathState.PARKED:
            self.enter(PathState.PROBING)

    def restart(self, epoch: int, now: float, *, announce: bool = True) -> None:
        """Drop the KCP session (and what it held) and start session ``epoch``.

        Announced sessions probe (an UP path adopting the peer's newer session stays
        up); unannounced ones are parked until the peer speaks.
        """
        self.retransmits_before += self.kcp.retransmits
        self.restarts += 1
        self.kcp = self._new_kcp(epoch, now)
        self.send = self.kcp.send
        self.waitsnd = self.kcp.waitsnd
        self.forget_sent()
        self.segments = self.sent_base = 0
        self.busy_since = None
        self.clock_ms = -1
        self.epoch = epoch
        self.peer_sent_ms = None
        self.next_hello = now
        if not (announce and self.state is PathState.UP):
            # An UP path adopting the peer's newer session keeps its last proof of two-way
            # reachability: a peer that hears nothing restarts its session every HELLO
            # tick, and resetting here would keep the stall rule from ever firing.
            self.confirmed_at = now
        self.session_start_ms = to_ms(now)
        self.two_way = False
        if not announce:
            self.enter(PathState.PARKED)
        elif self.state is not PathState.UP:
            self.enter(PathState.PROBING)
        self._reset_estimates(now)

    def _reset_estimates(self, now: float) -> None:
        """A new session starts empty and measures its link afresh (seeded by a hint)."""
        config = self._config
        cap = seed = None
        send_bps = self.send_cap_bps()
        if send_bps:
            cap = seed = send_bps / (_BITS_PER_BYTE * config.kcp_mtu)
        self.rc = RateController(
            now,
            max_window=config.snd_wnd,
            queue_cap=config.queue_limit,
            queue_delay=config.send_queue_delay,
            adaptive=config.adaptive_window,
            nodelay=config.kcp_nodelay,
            cap=cap,
            seed=seed,
        )
        self.window = -1
        self._sync_bounds()

    def send_cap_bps(self) -> float:
        """What this end may send on the link: our hint, else the peer's receive hint."""
        hint = self.rate_hint.send_bps if self.rate_hint is not None else 0.0
        peer = self.peer_receive_bps
        if hint and peer:
            return min(hint, peer)
        return hint or peer

    def set_peer_roles(self, backup: bool, receive_bps: float, now: float) -> None:
        """The peer's HELLO said whether the link is a backup and what it can receive."""
        self.peer_backup = backup
        if receive_bps != self.peer_receive_bps:
            self.peer_receive_bps = receive_bps
            if self.rc.rate <= 0.0 or self.segments == 0:
                self._reset_estimates(now)
            else:
                self.rc.set_cap(self.send_cap_bps() / (_BITS_PER_BYTE * self._config.kcp_mtu))
                self._sync_bounds()

    def unsent(self) -> int:
        """Segments handed to KCP and not sent yet (waiting beyond the in-flight window)."""
        kcp = self.kcp
        return kcp.waitsnd() - kcp.inflight

    @property
    def is_backup(self) -> bool:
        return self.backup or self.peer_backup

    def _sync_bounds(self) -> None:
        """Copy the rate controller's outputs onto the attributes the hot path reads."""
        rc = self.rc
        self.limit = rc.queue_limit
        self.pace_rate = rc.pace_rate
        self.half_rtt = rc.half_rtt
        self.seconds_per_segment = rc.seconds_per_segment
        if rc.window != self.window:
            self.window = rc.window
            kcp = self.kcp
            kcp.wndsize(max(1, kcp.send_span + self.window - kcp.inflight), 0)

    # -- KCP -------------------------------------------------------------------------

    def flush(self, now: float, *, force: bool = True, paced: bool = True) -> None:
        """Pace, update KCP to ``now`` and (``force``, or when KCP is due) flush it.

        Pacing opens KCP's window to what may leave now: the room in the in-flight
        window and, once a rate is known, no more than the pacing budget (KCP sends
        whatever its window allows at once, and after a hole is filled the window opens
        by dozens of segments in one go, a burst that overflows a short WAN buffer).
        The budget grows at :attr:`pace_rate`, capped at :data:`PACE_BURST` seconds'
        worth plus :data:`MIN_BURST` segments, and is charged with what was sent.
        Without ``force`` KCP flushes only on its own interval tick, so a batch of
        received datagrams shares one flush of ACKs.
        ``paced=False`` (CLOSE) opens KCP's window to everything queued, unpaced.
        """
        kcp = self.kcp
        if not paced:
            # Whatever is queued may leave at once (the last pacing may have closed the
            # window to what was already in flight, and CLOSE must still go out).
            kcp.wndsize(kcp.send_span + kcp.waitsnd(), 0)
            self.clock_ms = round(now * 1000)
            kcp.update(self.clock_ms)
            kcp.flush()
            return
        span = kcp.send_span
        room = self.window - kcp.inflight
        rate = self.pace_rate
        if rate:
            budget = self._budget + (now - self._paced_at) * rate
            burst = rate * PACE_BURST + MIN_BURST
            self._budget = budget = burst if budget > burst else budget
            if budget < room:
                room = int(budget)
        self._paced_at = now
        kcp.wndsize(span + room if room > 0 else max(1, span), 0)
        now_ms = round(now * 1000)  # to_ms(), inlined
        if now_ms != self.clock_ms:
            self.clock_ms = now_ms
            kcp.update(now_ms)
        if force:
            kcp.flush()
        if not kcp.inflight:
            self.busy_since = None
        elif self.busy_since is None:
            self.busy_since = now
        if rate:
            sent = kcp.send_span - span
            if sent > 0:
                self._budget -= sent
        if now >= self.rc.next_sample_at:
            self.sample_rate(now)

    def trim_acknowledged(self) -> None:
        """Forget the messages that KCP's cumulative acknowledgement has passed."""
        sent = self.sent
        head = self.sent_head
        count = len(sent)
        if head >= count:
            return
        kcp = self.kcp
        # sn of the oldest unacknowledged segment, in this session's segment count.
        una = self.segments - (kcp.waitsnd() - kcp.inflight) - kcp.send_span
        base = self.sent_base
        if self.single:  # one segment per message: step over the acknowledged ones
            step = min(una - base, count - head)
            if step > 0:
                head += step
                base += step
        else:
            mss = self.mss
            while head < count:
                size = len(sent[head])
                end = base + (1 if size <= mss else (size + mss - 1) // mss)
                if end > una:
                    break
                base = end
                head += 1
        if head != self.sent_head:
            self.head_moved = True
        if head == count:
            sent.clear()  # keeps the list (and the bound ``remember``) the same object
            head = 0
            self.single = True
            self.hedged = 0
        elif head >= COMPACT_AFTER and 2 * head >= count:
            del sent[:head]
            self.hedged = max(0, self.hedged - head)
            head = 0
        self.sent_head = head
        self.sent_base = base

    def unacknowledged(self) -> list[bytes]:
        """DATA messages that may not have reached the peer (a superset), oldest first;
        not those already hedged onto another path (that one now answers for them)."""
        self.trim_acknowledged()
        start = max(self.sent_head, self.hedged)
        return [m for m in self.sent[start:] if m[0] in _DATA_KINDS]

    def forget_sent(self) -> None:
        """Drop the record of sent messages (they were sent again elsewhere)."""
        self.sent.clear()
        self.sent_head = 0
        self.sent_base = self.segments
        self.single = True
        self.hedged = 0
        self.outstanding_since = None
        self.head_moved = False
        self.ack_stalled = False

    def stuck(self, now: float) -> list[bytes]:
        """DATA to hedge now: everything a silent path holds, once each.

        A path whose cumulative ACK has not moved, and on which nothing at all was heard,
        for :data:`STALL_RTTS` smoothed RTTs (plus :data:`HEDGE_SLACK`) is ``ack_stalled``
        (a link that went dark): what it holds is returned so that it drains onto the
        other paths long before liveness gives up on this one (``dead_after``, seconds).
        A path that is still heard only lost packets, which KCP repairs itself: hedging
        those holes too was measured to cost more than it saves (see docs/design.md).
        """
        self.trim_acknowledged()
        head = self.sent_head
        count = len(self.sent)
        if head >= count:
            self.outstanding_since = None
            self.head_moved = False
            self.ack_stalled = False
            return []
        if self.head_moved or self.outstanding_since is None:
            self.head_moved = False
            self.outstanding_since = now
            self.ack_stalled = False
            return []
        rtt = self.rc.srtt or self.rc.min_rtt
        if not rtt or now < self._stall_at(self.outstanding_since, rtt):
            return []
        self.ack_stalled = True
        start = max(self.hedged, head)
        return [m for m in self.sent[start:count] if m[0] in _DATA_KINDS]

    def mark_hedged(self) -> None:
        """What :meth:`stuck` returned went out on other paths: those now answer for it
        (:meth:`unacknowledged` leaves it out)."""
        self.hedged = len(self.sent)

    def hedge_deadline(self) -> float:
        """When :meth:`stuck` may next return something (inf: nothing to wait for)."""
        since = self.outstanding_since
        rtt = self.rc.srtt or self.rc.min_rtt
        if since is None or self.head_moved or not rtt or self.ack_stalled:
            # Nothing to wait for: the next KCP tick looks again (a path in flight has
            # one); a stalled path takes no new DATA, and what it held was hedged or, if
            # every path was silent, waits for its death's resend.
            return math.inf
        return self._stall_at(since, rtt)

    def _stall_at(self, since: float, rtt: float) -> float:
        """When the path counts as stalled: no cumulative ACK and nothing heard at all for
        STALL_RTTS (a path still heard lost packets: its holes are hedged one by one)."""
        heard = self.last_heard if self.last_heard is not None else since
        return max(since, heard) + STALL_RTTS * rtt + HEDGE_SLACK

    def idle(self) -> bool:
        """Nothing queued, in flight or owed: KCP's tick can wait for the next send."""
        return not self.kcp.waitsnd()

    def kcp_due(self, now: float, now_ms: int) -> float:
        """When KCP needs :meth:`flush` next (seconds), for a path that is not idle.

        With segments only in flight (nothing waiting, so no pacing tick is needed) that
        is their retransmission timeout, counted from when the oldest of them may have
        left (ACKs arrive through ``receive`` and flush at once); else KCP's own tick.
        """
        kcp = self.kcp
        busy_since = self.busy_since
        if busy_since is not None and kcp.waitsnd() == kcp.inflight:
            rto_due = busy_since + kcp.rto / 1000.0
            if rto_due > now:
                return rto_due
        return kcp.check(now_ms) / 1000.0

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
        segments = self.segments_for(len(message))
        self.segments += segments
        self.remember(message)  # it holds segment numbers between the DATA messages
        if segments > 1:
            self.single = False
        self.control_messages += 1

    def send_data(self, message: bytes) -> bool:
        """Queue one encoded DATA message and remember it until acknowledged."""
        if self.send(message) < 0:
            return False
        segments = self.segments_for(len(message))
        self.segments += segments
        self.remember(message)
        if segments > 1:
            self.single = False
        return True

    def segments_for(self, size: int) -> int:
        """KCP segments a message of ``size`` bytes takes."""
        mss = self.mss
        return 1 if size <= mss else (size + mss - 1) // mss

    def touch_meters(self, now: float) -> None:
        """Feed the recent-rate meters (from the timer: cheap enough, and often enough)."""
        self.tx_meter.touch(self.tx_bytes, now)
        self.rx_meter.touch(self.rx_bytes, now)

    def sample_rate(self, now: float) -> None:
        """Feed the rate controller; re-apply its bounds when they changed."""
        kcp = self.kcp
        rc = self.rc
        moved = rc.on_rtt(kcp.srtt, now)
        if moved:
            self._set_rto_floor(kcp)
        waiting = kcp.waitsnd()
        delivered = self.segments - waiting
        queued = waiting - kcp.inflight
        if rc.sample(now, delivered, queued, self.segments, kcp.retransmits,
                     inflight=kcp.inflight) or moved:
            self._sync_bounds()

    def _set_rto_floor(self, kcp: kcp_engines.KCPEngine) -> None:
        """Raise KCP's minimum RTO to :func:`rto_floor_ms` of the path's minimum RTT.

        KCP's own floor is fixed (30 or 100 ms) while its RTO tracks srtt + 4 rttvar,
        which hugs the RTT once pacing keeps the queue steady: any scheduling hiccup
        then fires the RTO for a whole window of segments that were not lost.
        """
        kcp.set_min_rto(self.rc.rto_floor)

    # -- liveness ----------------------------------------------------------------------

    def hello(self, now: float, sprays: bool) -> bytes:
        """The HELLO to send now; schedules the next one."""
        now_ms = to_ms(now)
        flags = messages.FLAG_EXPRESS | (messages.FLAG_SPRAYS if sprays else 0)
        if self.backup:
            flags |= messages.FLAG_BACKUP
        echo = delay = 0
        if self.peer_sent_ms is not None:
            flags |= messages.FLAG_ECHO
            echo = self.peer_sent_ms
            delay = now_ms - self.peer_hello_at_ms
        send_kbps = receive_kbps = 0
        if self.rate_hint is not None:
            send_kbps = math.ceil(self.rate_hint.send_bps / 1000)
            receive_kbps = math.ceil(self.rate_hint.receive_bps / 1000)
        self.next_hello = now + self._config.hello_interval
        hello = messages.Hello(flags, now_ms, echo, delay, self.rx_packets, send_kbps, receive_kbps)
        return messages.encode_hello(hello)

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
        if self.rc.on_rtt(self.kcp.srtt, now):
            self._set_rto_floor(self.kcp)
            self._sync_bounds()

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
            patience = min(hello * 2.0**self.unanswered_probes, PROBE_PATIENCE_MAX)
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
