"""The bond: IP packets in, KCP datagrams per path out, and back (sans-I/O).

The shell feeds TUN packets to :meth:`Bond.send_packet` and authenticated KCP bytes to
:meth:`Bond.receive`, then pulls :meth:`Bond.datagrams_to_send`,
:meth:`Bond.packets_received` and :meth:`Bond.next_event`, and arms one timer from
:meth:`Bond.get_timer`.  Nothing here reads a clock or touches a socket.

Ordering at the receiver follows the *sender's* scheduler, announced in its HELLOs:

* a sender that sprays (``roundrobin``, ``adaptive``, ``redundant``) puts one flow on
  several paths, so its DATA goes through a :class:`~ratbond.bond.reorder.ReorderBuffer`
  keyed by the bond ``seq`` (EXPRESS messages, small latency-sensitive packets, go out
  at once but still fill their place);
* a consistent-hashing sender keeps each flow on one path and each path's KCP delivers in
  order, so its DATA is handed out at once (a global buffer would only hold every flow
  behind another path's gap), through a :class:`~ratbond.bond.reorder.DedupWindow`.

Either way a ``seq`` is handed out once: DATA that a dying path may not have delivered is
sent again over the survivors (``BondConfig.resend_on_death``), and ``redundant`` /
``duplicate`` send copies on purpose; the first copy wins.

KCP is flushed once per batch: sends and receives mark their path dirty and
:meth:`Bond.datagrams_to_send` flushes the dirty ones (which also sends ACKs promptly).
An idle path (nothing queued or in flight) asks for no KCP tick, only its HELLO and
liveness deadlines.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable
from typing import Final

from ratbond.bond import messages
from ratbond.bond.config import BondConfig, LinkRate
from ratbond.bond.events import BondEvent, PathDown, PathUp, PeerClosed
from ratbond.bond.flow import BULK, REALTIME, SMALL_PACKET, flow_key, packet_class
from ratbond.bond.messages import Drop
from ratbond.bond.path import (
    DOWN_CLOSED,
    DOWN_PEER_CLOSED,
    DOWN_PEER_LINKDOWN,
    DOWN_STALLED,
    Path,
    PathState,
    epoch_newer,
    to_ms,
)
from ratbond.bond.reorder import OBSERVED_MARGIN, DedupWindow, ReorderBuffer
from ratbond.bond.scheduler import (
    AdaptiveScheduler,
    ConsistentScheduler,
)
from ratbond.bond.stats import BondSnapshot, PathSnapshot
from ratbond.kcp.core import OVERHEAD as KCP_OVERHEAD

_U32: Final = 0xFFFFFFFF
#: Bytes of a KCP segment header: shorter datagrams are not KCP.
KCP_HEADER: Final = KCP_OVERHEAD
_DATA: Final = messages.DATA
_EXPRESS: Final = messages.EXPRESS
_DATA_KINDS: Final = frozenset({_DATA, _EXPRESS})
_DATA_HEADER_SIZE: Final = messages.DATA_HEADER.size
_pack_header = messages.DATA_HEADER.pack  # encode_data(), inlined on the hot path
_unpack_seq = messages.SEQ.unpack_from  # data_seq(), inlined on the hot path
_unpack_conv = struct.Struct("<I").unpack_from  # a KCP datagram's conversation id

_PARKED: Final = PathState.PARKED
_IPV4_NO_OPTIONS: Final = 0x45
_PROTO: Final = 9  # offset of the IPv4 protocol byte
_TCP: Final = 6
_UDP: Final = 17
_DNS: Final = 53
_UP: Final = PathState.UP

#: Bounds of the adaptive reorder timeout (seconds).
REORDER_TIMEOUT_MIN: Final = 0.02
REORDER_TIMEOUT_MAX: Final = 1.0
#: Adaptive timeout before any RTT is known (KCP's initial RTO is 200 ms).
REORDER_TIMEOUT_INITIAL: Final = 0.2
#: Added to the delay spread: KCP ticks, pacing bursts and estimate errors (seconds).
REORDER_SLACK: Final = 0.015
#: Jitter (srtt above the minimum RTT) counts this many times in the hold.
REORDER_JITTER_GAIN: Final = 2.0

#: Consistent hashing re-places flows only when a path's capacity weight changed by
#: more than this factor since it was applied (so flows do not move every tick).
WEIGHT_CHANGE_FACTOR: Final = 2.0
#: How often capacity weights are compared with the applied ones (seconds).
WEIGHT_REFRESH_INTERVAL: Final = 1.0

_CONSISTENT: Final = 0
_ROUNDROBIN: Final = 1
_ADAPTIVE: Final = 2
_REDUNDANT: Final = 3
_MODES: Final = {
    "consistent": _CONSISTENT,
    "roundrobin": _ROUNDROBIN,
    "adaptive": _ADAPTIVE,
    "redundant": _REDUNDANT,
}
#: Lowest packet class that gets a second copy, per ``BondConfig.duplicate``.
_DUPLICATE_FROM: Final = {"none": REALTIME + 1, "small": BULK + 1, "ef": REALTIME}


class BondError(Exception):
    """Misuse of the :class:`Bond` API by its caller (never raised for peer input)."""


class UnknownPathError(BondError, KeyError):
    """The path id was never added, or was removed already."""


class PathExistsError(BondError):
    """``add_path`` for a path id that is already part of the bond."""


class BondClosedError(BondError):
    """The bond was closed (locally or by the peer); it accepts no new paths."""


class Bond:
    """Several KCP paths to one peer, seen as one packet pipe.

    One shell iteration, after any input (TUN packets, datagrams, timer)::

        bond.send_packet(packet, now)          # per TUN packet, while bond.can_send()
        bond.receive(path_id, kcp_bytes, now)  # per authenticated datagram
        bond.handle_timer(now)                 # when get_timer() is due
        for path_id, datagram in bond.datagrams_to_send(): seal and send on path_id
        for packet in bond.packets_received(): write to the TUN
        while (event := bond.next_event()) is not None: log / routes
        re-arm the one timer at bond.get_timer()

    The server calls :meth:`add_path` when :meth:`has_path` is False for the path id
    of an authenticated datagram, then :meth:`receive`.  After :class:`PeerClosed` (or
    :meth:`close`) the bond is finished; a new session needs a new bond.
    """

    def __init__(self, config: BondConfig, now: float) -> None:
        self._config = config
        self._now = now
        self._mode = _MODES[config.balance]
        self._sprays = self._mode != _CONSISTENT
        # Packets of this class or above get a second copy (every one when redundant).
        self._copy_from = BULK if self._mode == _REDUNDANT else _DUPLICATE_FROM[config.duplicate]
        # Round-robin is the adaptive scheduler without the small-packet lane.
        self._classify = self._mode >= _ADAPTIVE or config.duplicate != "none"
        self._paths: dict[int, Path] = {}
        self._epochs: dict[int, int] = {}  # last epoch per path id, kept across removal
        self._live: tuple[int, ...] = ()
        self._lanes: tuple[Path, ...] = ()  # live paths that may carry DATA now
        self._weights: dict[int, float] = {}
        self._applied_capacity: dict[int, float] = {}
        self._weights_at = now
        self._consistent = ConsistentScheduler()
        self._adaptive: AdaptiveScheduler[Path] = AdaptiveScheduler()
        self._pick_adaptive = self._adaptive.pick
        self._pick_flow = self._consistent.pick
        self._outbox: list[tuple[int, bytes]] = []
        self._inbox: list[bytes] = []
        self._inbox_append = self._inbox.append
        self._events: deque[BondEvent] = deque()
        self._dirty: set[int] = set()
        self._seq = 0
        self._peer_sprays = False
        self._peer_express = False
        adaptive = config.reorder_timeout is None
        self._reorder = ReorderBuffer(
            self._inbox_append,
            max_packets=config.reorder_max_packets,
            max_bytes=config.reorder_max_bytes,
            timeout=REORDER_TIMEOUT_INITIAL if adaptive else float(config.reorder_timeout or 0),
        )
        if adaptive:
            self._reorder.adapt_up_to = REORDER_TIMEOUT_MAX
        self._dedup = DedupWindow()
        self._seen = self._dedup.seen
        self._seen_mask = self._dedup.mask
        self._drops: dict[str, int] = {}
        self._packets_in = 0
        self._bytes_in = 0
        self._packets_out = 0
        self._copies = 0
        self._resent = 0
        self._hedged = 0
        self._closed = False
        self._peer_closed = False

    # -- paths -------------------------------------------------------------------------

    def add_path(
        self,
        path_id: int,
        now: float,
        *,
        backup: bool = False,
        rate_hint: LinkRate | None = None,
    ) -> None:
        """A local path exists now (client: socket open; server: first datagram of it).

        Starts a fresh KCP session under the next epoch for this id and sends HELLO at
        once; the path is up when the peer answers.  A ``backup`` path carries DATA only
        while no primary path is up; ``rate_hint`` caps and seeds its estimate (and the
        peer learns both from its HELLOs).
        """
        if self._closed or self._peer_closed:
            raise BondClosedError(f"cannot add path {path_id}: the bond is closed")
        if isinstance(path_id, bool) or not isinstance(path_id, int) or not 0 <= path_id <= 0xFFFF:
            raise ValueError(f"path_id={path_id!r}: must be an integer in [0, 65535]")
        if path_id in self._paths:
            raise PathExistsError(f"path {path_id} is already part of the bond")
        if rate_hint is not None and not isinstance(rate_hint, LinkRate):
            raise ValueError(f"rate_hint={rate_hint!r}: must be a LinkRate or None")
        self._now = now
        epoch = (self._epochs.get(path_id, 0) + 1) & 0xFFFF
        path = Path(
            path_id,
            epoch,
            self._config,
            self._output_for(path_id),
            now,
            backup=bool(backup),
            rate_hint=rate_hint,
        )
        self._paths[path_id] = path
        self._epochs[path_id] = epoch
        self._send_hello(path, now)

    def remove_path(self, path_id: int, now: float, reason: str) -> None:
        """The shell knows the path is gone (link down, route lost, socket error).

        The path leaves at once, its flows move to the survivors, what it may not have
        delivered is sent again over them, and LINKDOWN goes to the peer over every
        surviving path.  PathDown is queued if it was up.
        """
        path = self._paths.get(path_id)
        if path is None:
            raise UnknownPathError(path_id)
        self._now = now
        self._take_down(path, reason, notify_peer=True)
        path.enter(PathState.CLOSED, reason)
        del self._paths[path_id]
        self._dirty.discard(path_id)

    def has_path(self, path_id: int) -> bool:
        """True while ``path_id`` is part of the bond (up or probing)."""
        return path_id in self._paths

    def live_paths(self) -> list[int]:
        """Ids of the paths that are up, ascending."""
        return list(self._live)

    def set_path_weight(self, path_id: int, weight: float) -> None:
        """Share of flows ``path_id`` gets under consistent hashing, relative to its
        capacity estimate (default 1.0)."""
        if path_id not in self._paths:
            raise UnknownPathError(path_id)
        if not (weight > 0.0 and math.isfinite(weight)):
            raise ValueError(f"weight={weight!r}: must be a finite number > 0")
        self._weights[path_id] = weight
        self._update_live()

    # -- data --------------------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> bool:  # noqa: C901 - the hot path, unsplit
        """Queue one IP packet on a path; False (and a counted drop) when it cannot go.

        Never buffers beyond the per-path queue bound: with no live path, or when the
        chosen path's queue is full, the packet is dropped here.
        """
        self._now = now
        if not packet:
            self._drop(Drop.EMPTY_PACKET)
            return False
        mode = self._mode
        kind = BULK
        if self._classify:
            size = len(packet)
            proto = packet[9] if size > _PROTO else 0
            # The common bulk case inlined: IPv4 without options or DSCP/ECN, TCP, or UDP
            # whose ports cannot be 53 (their low bytes are not).
            if not (
                size >= SMALL_PACKET
                and packet[0] == _IPV4_NO_OPTIONS
                and not packet[1]
                and (proto == _TCP or (proto == _UDP and packet[21] != _DNS and packet[23] != _DNS))
            ):
                kind = packet_class(packet)
        path: Path | None
        if mode == _CONSISTENT:
            path_id = self._pick_flow(flow_key(packet))
            if path_id is None:
                self._drop(Drop.CLOSED if self._closed else Drop.NO_PATH)
                return False
            path = self._paths[path_id]
            if path.waitsnd() >= path.limit:
                self._drop(Drop.QUEUE_FULL)
                return False
        else:
            path = self._pick_adaptive() if kind == BULK else self._adaptive.pick_fastest()
            if path is None:
                if self._closed:
                    self._drop(Drop.CLOSED)
                else:
                    self._drop(Drop.QUEUE_FULL if self._live else Drop.NO_PATH)
                return False
        seq = self._seq
        if kind == BULK or not self._peer_express:
            message = _pack_header(_DATA, seq) + packet
        else:
            message = _pack_header(_EXPRESS, seq) + packet
        if path.send(message) < 0:
            self._drop(Drop.TOO_BIG)
            return False
        # Path.send_data(), inlined: count KCP's segments, remember until acknowledged.
        size = len(packet)
        if size < path.payload_max:
            path.segments += 1
        else:
            path.segments += path.segments_for(size + _DATA_HEADER_SIZE)
            path.single = False
        path.remember(message)
        self._seq = (seq + 1) & _U32
        path.tx_packets += 1
        path.tx_bytes += size
        self._packets_in += 1
        self._bytes_in += size
        self._dirty.add(path.path_id)
        if kind >= self._copy_from:
            self._send_copy(message, path, size)
        return True

    def _send_copy(self, message: bytes, first: Path, size: int) -> None:
        """A second copy of ``message`` on the best other lane with room (if any)."""
        second = self._adaptive.pick_other(first)
        if second is None or not second.send_data(message):
            return
        second.tx_packets += 1
        second.tx_bytes += size
        self._copies += 1
        self._dirty.add(second.path_id)

    def can_send(self) -> bool:
        """True while some live path has room; the shell stops reading the TUN if not."""
        return any(path.waitsnd() < path.limit for path in self._lanes)

    def receive(self, path_id: int, data: bytes, now: float) -> None:  # noqa: C901 - the hot path
        """One authenticated KCP datagram from the peer on ``path_id``."""
        self._now = now
        path = self._paths.get(path_id)
        if path is None:
            self._drop(Drop.UNKNOWN_PATH)
            return
        if self._closed or self._peer_closed:
            self._drop(Drop.CLOSED)
            return
        if len(data) < KCP_HEADER:
            self._drop(Drop.SHORT_DATAGRAM)
            return
        if len(data) > self._config.kcp_mtu:
            # KCP never sends a datagram larger than its MTU (both ends use kcp_mtu): a
            # bigger one is a broken or hostile peer, and accepting it would let the
            # receive window hold rcv_wnd segments of up to 64 KiB each, per path.
            self._drop(Drop.KCP_REJECTED)
            return
        conv = _unpack_conv(data)[0]
        if conv != path.conv:
            if conv & 0xFFFF != path_id:
                self._drop(Drop.WRONG_PATH)
                return
            if not epoch_newer(conv >> 16, path.epoch):
                self._drop(Drop.STALE_SESSION)
                return
            self._restart(path, conv >> 16, now)
        kcp = path.kcp
        if round(now * 1000) != path.clock_ms:  # a drained batch shares one ``now``
            path.flush(now, force=False)
        if kcp.input(data) < 0:
            self._drop(Drop.KCP_REJECTED)
            return
        path.last_heard = now
        if path.state is _PARKED:
            path.heard(now)
        self._dirty.add(path_id)
        recv = kcp.recv
        message = recv()
        while message is not None:
            # An empty KCP message (a zero-length segment) is no bond message: it goes to
            # _on_control, which counts it as EMPTY_MESSAGE.
            kind = message[0] if message else 0
            if kind in _DATA_KINDS and len(message) > _DATA_HEADER_SIZE:
                packet = message[_DATA_HEADER_SIZE:]
                path.rx_packets += 1
                path.rx_bytes += len(packet)
                if path.state is not _UP:
                    self._bring_up(path)  # the peer sends DATA only on paths it holds up
                seq = _unpack_seq(message, 1)[0]
                if self._peer_sprays:
                    if kind == _DATA:
                        self._reorder.push(seq, packet, now)
                    else:
                        self._reorder.pass_through(seq, packet, now)
                else:  # DedupWindow.fresh(), inlined
                    seen = self._seen
                    slot = seq & self._seen_mask
                    if seen[slot] != seq:
                        seen[slot] = seq
                        self._inbox_append(packet)
                    else:
                        self._dedup.duplicates += 1
            else:
                self._on_control(path, message, now)
                if path.kcp is not kcp or self._peer_closed:
                    return  # the session this message belonged to is gone
            message = recv()

    def packets_received(self) -> list[bytes]:
        """IP packets for the TUN, in order; drained."""
        inbox = self._inbox
        if not inbox:
            return []
        packets = inbox[:]
        inbox.clear()
        self._packets_out += len(packets)
        return packets

    def datagrams_to_send(self) -> list[tuple[int, bytes]]:
        """(path id, KCP datagram) pairs for the shell to seal and send; drained.

        Flushes every path that sent or received since the last call, so many packets
        share one flush and ACKs leave without waiting for the next KCP tick.
        """
        dirty = self._dirty
        if dirty:
            now = self._now
            paths = self._paths
            for path_id in dirty:
                path = paths.get(path_id)
                if path is not None:
                    path.flush(now)
            dirty.clear()
        outbox = self._outbox
        if not outbox:
            return []
        datagrams = outbox[:]
        outbox.clear()
        return datagrams

    def next_event(self) -> BondEvent | None:
        """The oldest queued event, or None."""
        return self._events.popleft() if self._events else None

    # -- time --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next (absolute seconds), None when idle.

        A path with nothing queued or in flight needs no KCP tick: only its HELLO and
        liveness deadlines count; one with segments in flight only, their RTO.
        """
        if self._closed or self._peer_closed:
            return None
        now_ms = to_ms(self._now)
        due = math.inf
        for path in self._paths.values():
            due = min(due, path.deadline())
            if not path.idle():
                due = min(due, path.kcp_due(self._now, now_ms))
                if self._sprays and path.up:
                    due = min(due, path.hedge_deadline())
        reorder_due = self._reorder.deadline()
        if reorder_due is not None:
            due = min(due, reorder_due)
        return None if due == math.inf else due

    def handle_timer(self, now: float) -> None:
        """Run KCP timers, HELLOs, liveness checks and reorder timeouts due by ``now``."""
        self._now = now
        if self._closed or self._peer_closed:
            return
        now_ms = to_ms(now)
        for path in list(self._paths.values()):
            if not path.idle():
                # ikcp's update() flushes on interval ticks only, while check() may
                # already report a due retransmission: send it now instead of spinning.
                path.flush(now, force=path.kcp.check(now_ms) <= now_ms)
                path.trim_acknowledged()
                path.sample_rate(now)
            path.touch_meters(now)
            if path.up and not self._keep_up(path, now):
                continue
            if now >= path.next_hello and not path.parked:
                if not path.up and path.waitsnd() > 0:
                    # The last probe is unanswered: once it had time to be answered, probe
                    # with a fresh session rather than queue HELLOs behind it (see the
                    # path module docstring); until then, wait for it.
                    retry_at = path.probe_deadline()
                    if now >= retry_at:
                        path.unanswered_probes += 1
                        self._restart(path, path.epoch + 1, now)
                    else:
                        path.next_hello = retry_at
                else:
                    self._send_hello(path, now)
        if now - self._weights_at >= WEIGHT_REFRESH_INTERVAL:
            self._weights_at = now
            self._refresh_budget()
            if self._mode == _CONSISTENT and self._weights_moved():
                self._applied_capacity = capacity = self._capacities(self._lanes)
                self._consistent.reweigh(self._flow_weights(capacity))
        if self._peer_sprays:
            self._refresh_reorder()
            self._reorder.expire(now)

    def close(self, now: float) -> None:
        """Say CLOSE on every path and flush it; the bond then stays silent.

        CLOSE is sent once, best effort: if it is lost the peer notices by silence.
        Pull :meth:`datagrams_to_send` once more to get it out.
        """
        if self._closed:
            return
        self._now = now
        close = messages.encode_close()
        for path in self._paths.values():
            path.send_control(close)
            path.flush(now, paced=False)
            path.enter(PathState.CLOSED, DOWN_CLOSED)
        self._closed = True
        self._dirty.clear()
        self._live = ()
        self._update_schedulers()

    # -- status ------------------------------------------------------------------------

    def reorder_hold(self) -> float:
        """How long a gap in the peer's sprayed ``seq`` is waited for (seconds).

        The one-way delay spread of the live paths (half the difference of their
        minimum RTTs) plus their jitter (srtt above the minimum), a slack for KCP ticks
        and pacing, and one fast retransmission (the slowest minimum RTT); not a whole
        RTO of the slowest path.  At least the longest wait for a gap recently observed
        (with a margin): the sender's queues shift arrivals by more than the RTTs show.

        The retransmission is always counted: KCP repairs every loss, so a gap is far
        more often a repair under way than a dead path (whose DATA is sent again anyway),
        and this end cannot tell from its own counters whether the *peer's* direction
        loses -- a download's receiver sends only ACKs, which its loss figure describes.
        Giving a gap up while its repair is under way hands the flow a reordering that
        TCP takes for loss.
        """
        paths = self._paths
        live = [paths[pid].rc for pid in self._live]
        rtts = [rc.min_rtt for rc in live if rc.min_rtt]
        if len(rtts) < len(live) or not rtts:
            return max(self._reorder.timeout, REORDER_TIMEOUT_INITIAL)
        spread = (max(rtts) - min(rtts)) / 2.0
        jitter = max(max(rc.srtt - rc.min_rtt, 0.0) for rc in live)
        hold = spread + REORDER_JITTER_GAIN * jitter + REORDER_SLACK + max(rtts)
        hold = max(hold, OBSERVED_MARGIN * self._reorder.observed_wait)
        return min(max(hold, REORDER_TIMEOUT_MIN), REORDER_TIMEOUT_MAX)

    def snapshot(self, *, now: float | None = None) -> BondSnapshot:
        """Counters as of ``now``, or of the latest ``now`` the bond was given.

        An idle bond is not woken up often (see :meth:`get_timer`), so pass the
        current time for ages and recent rates (which fall to 0 when idle) to be current.
        """
        if now is None or now < self._now:
            now = self._now
        mtu_bits = 8 * self._config.kcp_mtu
        paths = {
            path_id: PathSnapshot(
                path_id=path_id,
                state="up" if path.up else "down",
                epoch=path.epoch,
                srtt_ms=path.kcp.srtt,
                rto_ms=path.kcp.rto,
                hello_rtt_ms=path.hello_rtt_ms,
                tx_packets=path.tx_packets,
                tx_bytes=path.tx_bytes,
                rx_packets=path.rx_packets,
                rx_bytes=path.rx_bytes,
                peer_rx_packets=path.peer_rx_packets,
                retransmits=path.retransmits,
                inflight=path.kcp.inflight,
                waitsnd=path.waitsnd(),
                queue_limit=path.limit,
                rate_pps=round(path.rc.rate, 1),
                restarts=path.restarts,
                last_heard_ago_s=None if path.last_heard is None else now - path.last_heard,
                down_reason=path.down_reason,
                path_state=path.state.value,
                capacity_bps=round(path.rc.rate * mtu_bits),
                tx_rate_bps=round(path.tx_meter.rate_bps(path.tx_bytes, now)),
                rx_rate_bps=round(path.rx_meter.rate_bps(path.rx_bytes, now)),
                min_rtt_ms=round(path.rc.min_rtt * 1000, 1),
                loss=round(path.rc.loss, 4),
                rate_phase=path.rc.phase.value,
                window=path.window,
                backup=path.is_backup,
            )
            for path_id, path in sorted(self._paths.items())
        }
        return BondSnapshot(
            balance=self._config.balance,
            paths=paths,
            live_paths=self._live,
            packets_in=self._packets_in,
            bytes_in=self._bytes_in,
            packets_out=self._packets_out + len(self._inbox),
            drops=dict(self._drops),
            reorder=self._reorder.stats(),
            peer_sprays=self._peer_sprays,
            closed=self._closed or self._peer_closed,
            duplicates=self._dedup.duplicates + self._reorder.stats().duplicates,
            copies_sent=self._copies,
            resent=self._resent,
            hedged=self._hedged,
        )

    # -- internals ---------------------------------------------------------------------

    def _output_for(self, path_id: int) -> Callable[[bytes], None]:
        append = self._outbox.append

        def output(datagram: bytes) -> None:
            append((path_id, datagram))

        return output

    def _drop(self, reason: Drop) -> None:
        key = reason.value
        self._drops[key] = self._drops.get(key, 0) + 1

    def _send_hello(self, path: Path, now: float) -> None:
        path.send_control(path.hello(now, self._sprays))
        self._dirty.add(path.path_id)

    def _restart(self, path: Path, epoch: int, now: float, *, announce: bool = True) -> None:
        """Fresh KCP session ``epoch`` for ``path``: announced by an immediate HELLO, or
        parked (silent until the peer speaks on it).  DATA the old session may not have
        delivered goes again over the live paths."""
        epoch &= 0xFFFF
        lost = path.unacknowledged()
        path.restart(epoch, now, announce=announce)
        self._epochs[path.path_id] = epoch
        if announce:
            self._send_hello(path, now)
        self._resend(lost)

    def _resend(self, lost: list[bytes]) -> None:
        """Send ``lost`` DATA messages again on the live paths, past their queue bounds
        (these packets were accepted once; the receiver drops the copies it has)."""
        if not lost or not self._config.resend_on_death:
            return
        for message in lost:
            path: Path | None
            if self._mode == _CONSISTENT:
                path_id = self._pick_flow(flow_key(message[_DATA_HEADER_SIZE:]))
                path = None if path_id is None else self._paths[path_id]
            else:
                path = self._adaptive.pick_any()
            if path is None:
                self._drop(Drop.NO_PATH)
                continue
            if path.send_data(message):
                self._resent += 1
                self._dirty.add(path.path_id)

    def _keep_up(self, path: Path, now: float) -> bool:
        """A live path's timer work: hedge what it holds back, take it down once it failed
        (and start a fresh session on it); False when it went down."""
        if self._sprays:
            self._hedge(path, now)
        reason = path.failure(now)
        if reason is None:
            return True
        self._take_down(path, reason, notify_peer=True)
        self._restart(path, path.epoch + 1, now)
        return False

    def _hedge(self, path: Path, now: float) -> None:
        """Drain a path that went silent onto the other lanes, before it is declared dead.

        Liveness takes ``dead_after`` (seconds) to give up on a path; a link that went
        dark would hold everything it carries until then, and a TCP flow stalls behind
        the gap.  After a few RTTs of silence (:meth:`Path.stuck`) what it holds goes
        again, once each, where it arrives first; the peer drops whichever copy comes
        second by ``seq``.  The path leaves the lanes until its ACKs resume.
        """
        was_stalled = path.ack_stalled
        stuck = path.stuck(now)
        if path.ack_stalled != was_stalled:
            self._update_schedulers()
        if not stuck:
            return
        for message in stuck:
            other = self._adaptive.pick_any(exclude=path)
            if other is None or other.ack_stalled:
                return  # every lane is silent: it stays for the resend at path death
            # A message KCP refuses here (too big) would be refused on every path alike.
            if other.send_data(message):
                self._hedged += 1
                self._dirty.add(other.path_id)
        path.mark_hedged()

    def _bring_up(self, path: Path) -> None:
        path.enter(PathState.UP)
        self._update_live()
        self._events.append(PathUp(path.path_id))

    def _take_down(self, path: Path, reason: str, *, notify_peer: bool) -> None:
        """Mark ``path`` down; tell the peer over the survivors when we found out first."""
        was_up = path.up
        path.enter(PathState.PROBING if path.state is PathState.UP else path.state, reason)
        path.last_heard = None
        if was_up:
            self._update_live()
            self._events.append(PathDown(path.path_id, reason))
            if self._peer_sprays:
                # Whatever the dead path still carried comes again over the survivors
                # (the peer resends it) or not at all: stop holding the gaps.  Their
                # packets still go out when they arrive, just late (see ReorderBuffer).
                self._reorder.expire(math.inf)
        if was_up:
            # Resend before the LINKDOWN goes out: the peer then fills its reorder gaps
            # in order before it stops waiting for them.
            self._resend(path.unacknowledged())
            path.forget_sent()
        if notify_peer:
            notice = messages.encode_linkdown(path.path_id, path.epoch)
            for survivor_id in self._live:
                survivor = self._paths[survivor_id]
                survivor.send_control(notice)
                self._dirty.add(survivor_id)

    def _update_live(self) -> None:
        self._live = tuple(sorted(pid for pid, path in self._paths.items() if path.up))
        self._update_schedulers()

    def _update_schedulers(self) -> None:
        paths = self._paths
        live = [paths[pid] for pid in self._live if pid in paths]
        primaries = [path for path in live if not path.is_backup]
        lanes = tuple(primaries or live)
        if self._sprays:
            # A stalled lane (its ACKs stopped, see _hedge) takes no new DATA while
            # another can: what it holds was hedged onto the others.
            lanes = tuple(path for path in lanes if not path.ack_stalled) or lanes
        self._lanes = lanes
        capacity = self._capacities(lanes)
        self._applied_capacity = capacity
        self._consistent.set_paths(self._flow_weights(capacity))
        self._adaptive.set_paths(lanes)
        self._refresh_budget()
        self._refresh_reorder()

    def _flow_weights(self, capacity: dict[int, float]) -> dict[int, float]:
        """Rendezvous weights: capacity times the caller's weight (set_path_weight)."""
        return {pid: self._weights.get(pid, 1.0) * weight for pid, weight in capacity.items()}

    @staticmethod
    def _capacities(lanes: tuple[Path, ...]) -> dict[int, float]:
        """Capacity weight per lane: its estimate, or the mean of the known ones."""
        known = [path.rc.rate for path in lanes if path.rc.rate > 0.0]
        default = sum(known) / len(known) if known else 1.0
        return {path.path_id: path.rc.rate if path.rc.rate > 0.0 else default for path in lanes}

    def _weights_moved(self) -> bool:
        """True when some lane's capacity moved by WEIGHT_CHANGE_FACTOR since applied."""
        current = self._capacities(self._lanes)
        for path_id, weight in current.items():
            applied = self._applied_capacity.get(path_id)
            if applied is None:
                return True
            ratio = weight / applied
            if ratio > WEIGHT_CHANGE_FACTOR or ratio < 1.0 / WEIGHT_CHANGE_FACTOR:
                return True
        return False

    def _refresh_reorder(self) -> None:
        """Re-derive the adaptive reorder hold (RTTs or live paths changed, or a tick)."""
        if self._config.reorder_timeout is None:
            self._reorder.timeout = self.reorder_hold()

    def _refresh_budget(self) -> None:
        """The adaptive scheduler's reorder budget: what the peer's buffer waits."""
        if self._config.reorder_timeout is not None:
            self._adaptive.budget = float(self._config.reorder_timeout)
        else:
            self._adaptive.budget = self.reorder_hold()

    def _on_control(self, path: Path, message: bytes, now: float) -> None:
        parsed = messages.parse_message(message)
        if isinstance(parsed, messages.Hello):
            if parsed.sprays:
                self._peer_sprays = True
            if parsed.express:
                self._peer_express = True
            first = path.peer_sent_ms is None
            path.on_hello(parsed, now)
            self._refresh_reorder()
            was_backup = path.is_backup
            path.set_peer_roles(parsed.backup, parsed.receive_kbps * 1000.0, now)
            if path.is_backup != was_backup:
                self._update_schedulers()
            if first or not parsed.has_echo:
                # Echo at once: the peer comes up on an echo of its session's HELLO.
                self._send_hello(path, now)
            if not path.up:
                if path.two_way:
                    self._bring_up(path)
            elif path.stalled(now):
                self._take_down(path, DOWN_STALLED, notify_peer=True)
                self._restart(path, path.epoch + 1, now)
        elif isinstance(parsed, messages.LinkDown):
            self._on_linkdown(parsed, now)
        elif isinstance(parsed, messages.Close):
            self._on_close()
        elif isinstance(parsed, messages.Malformed):
            self._drop(parsed.reason)
        else:  # pragma: no cover - receive() handles every well-formed DATA itself
            self._inbox_append(parsed.packet)

    def _on_linkdown(self, notice: messages.LinkDown, now: float) -> None:
        target = self._paths.get(notice.path_id)
        if target is None or not target.up or epoch_newer(target.epoch, notice.epoch):
            self._drop(Drop.LINKDOWN_IGNORED)
            return
        self._take_down(target, DOWN_PEER_LINKDOWN, notify_peer=False)
        newest = notice.epoch if epoch_newer(notice.epoch, target.epoch) else target.epoch
        # The peer owns the failed link and probes when it returns: wait for it, on the
        # session epoch it will pick next, rather than queue probes it cannot hear.
        self._restart(target, newest + 1, now, announce=False)

    def _on_close(self) -> None:
        for path in self._paths.values():
            self._take_down(path, DOWN_PEER_CLOSED, notify_peer=False)
            path.enter(PathState.CLOSED, DOWN_PEER_CLOSED)
        self._peer_closed = True
        self._dirty.clear()
        self._events.append(PeerClosed())
