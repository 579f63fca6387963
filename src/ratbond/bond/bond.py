"""The bond: IP packets in, KCP datagrams per path out, and back (sans-I/O).

The shell feeds TUN packets to :meth:`Bond.send_packet` and authenticated KCP bytes to
:meth:`Bond.receive`, then pulls :meth:`Bond.datagrams_to_send`,
:meth:`Bond.packets_received` and :meth:`Bond.next_event`, and arms one timer from
:meth:`Bond.get_timer`.  Nothing here reads a clock or touches a socket.

Ordering at the receiver follows the *sender's* scheduler, announced in its HELLOs:

* a sender that sprays (round-robin) puts one flow on several paths, so its DATA goes
  through a :class:`~ratbond.bond.reorder.ReorderBuffer` keyed by the bond ``seq``;
* a consistent-hashing sender keeps each flow on one path and each path's KCP delivers in
  order, so its DATA is handed out at once: a global buffer would only hold every flow
  behind another path's gap (head-of-line blocking across unrelated flows) and add
  latency without restoring any order that matters.  A flow that moves because its path
  died loses that path's in-flight packets anyway, so nothing can overtake them.

KCP is flushed once per batch: sends and receives mark their path dirty and
:meth:`Bond.datagrams_to_send` flushes the dirty ones (which also sends ACKs promptly).
Unacknowledged DATA of a path that dies is lost with its KCP session (the engines do not
expose their send buffers); the flows' own transports recover it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Final

from ratbond.bond import messages
from ratbond.bond.config import BondConfig
from ratbond.bond.events import BondEvent, PathDown, PathUp, PeerClosed
from ratbond.bond.flow import flow_key
from ratbond.bond.path import (
    DOWN_PEER_CLOSED,
    DOWN_PEER_LINKDOWN,
    DOWN_STALLED,
    Path,
    epoch_newer,
    to_ms,
)
from ratbond.bond.reorder import ReorderBuffer
from ratbond.bond.scheduler import ConsistentScheduler, EarliestDeliveryScheduler
from ratbond.bond.stats import BondSnapshot, PathSnapshot

_U32: Final = 0xFFFFFFFF
_KCP_HEADER: Final = 24
_DATA_HEADER = messages.DATA_HEADER
_DATA: Final = messages.DATA

#: Bounds of the adaptive reorder timeout (seconds).
REORDER_TIMEOUT_MIN: Final = 0.02
REORDER_TIMEOUT_MAX: Final = 1.0
#: Adaptive timeout before any RTT is known (KCP's initial RTO is 200 ms).
REORDER_TIMEOUT_INITIAL: Final = 0.2


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
        self._sprays = config.balance == "roundrobin"
        self._paths: dict[int, Path] = {}
        self._epochs: dict[int, int] = {}  # last epoch per path id, kept across removal
        self._live: tuple[int, ...] = ()
        self._weights: dict[int, float] = {}
        self._consistent = ConsistentScheduler()
        self._spray: EarliestDeliveryScheduler[Path] = EarliestDeliveryScheduler()
        self._pick_flow = self._consistent.pick
        self._pick_lane = self._spray.pick
        self._outbox: list[tuple[int, bytes]] = []
        self._inbox: list[bytes] = []
        self._inbox_append = self._inbox.append
        self._events: deque[BondEvent] = deque()
        self._dirty: set[int] = set()
        self._seq = 0
        self._peer_sprays = False
        adaptive = config.reorder_timeout is None
        self._reorder = ReorderBuffer(
            self._inbox_append,
            max_packets=config.reorder_max_packets,
            max_bytes=config.reorder_max_bytes,
            timeout=REORDER_TIMEOUT_INITIAL if adaptive else float(config.reorder_timeout or 0),
        )
        self._drops: dict[str, int] = {}
        self._packets_in = 0
        self._bytes_in = 0
        self._packets_out = 0
        self._closed = False
        self._peer_closed = False

    # -- paths -------------------------------------------------------------------------

    def add_path(self, path_id: int, now: float) -> None:
        """A local path exists now (client: socket open; server: first datagram of it).

        Starts a fresh KCP session under the next epoch for this id and sends HELLO at
        once; the path is up when the peer answers.
        """
        if self._closed or self._peer_closed:
            raise BondClosedError(f"cannot add path {path_id}: the bond is closed")
        if isinstance(path_id, bool) or not isinstance(path_id, int) or not 0 <= path_id <= 0xFFFF:
            raise ValueError(f"path_id={path_id!r}: must be an integer in [0, 65535]")
        if path_id in self._paths:
            raise PathExistsError(f"path {path_id} is already part of the bond")
        self._now = now
        epoch = (self._epochs.get(path_id, 0) + 1) & 0xFFFF
        path = Path(path_id, epoch, self._config, self._output_for(path_id), now)
        self._paths[path_id] = path
        self._epochs[path_id] = epoch
        self._send_hello(path, now)

    def remove_path(self, path_id: int, now: float, reason: str) -> None:
        """The shell knows the path is gone (link down, route lost, socket error).

        The path leaves at once, its flows move to the survivors, and LINKDOWN goes to
        the peer over every surviving path.  PathDown is queued if it was up.
        """
        path = self._paths.get(path_id)
        if path is None:
            raise UnknownPathError(path_id)
        self._now = now
        self._take_down(path, reason, notify_peer=True)
        del self._paths[path_id]
        self._dirty.discard(path_id)

    def has_path(self, path_id: int) -> bool:
        """True while ``path_id`` is part of the bond (up or probing)."""
        return path_id in self._paths

    def live_paths(self) -> list[int]:
        """Ids of the paths that are up, ascending."""
        return list(self._live)

    def set_path_weight(self, path_id: int, weight: float) -> None:
        """Share of flows ``path_id`` gets under consistent hashing (default 1.0)."""
        if path_id not in self._paths:
            raise UnknownPathError(path_id)
        if not (weight > 0.0 and math.isfinite(weight)):
            raise ValueError(f"weight={weight!r}: must be a finite number > 0")
        self._weights[path_id] = weight
        self._update_live()

    # -- data --------------------------------------------------------------------------

    def send_packet(self, packet: bytes, now: float) -> bool:
        """Queue one IP packet on a path; False (and a counted drop) when it cannot go.

        Never buffers beyond the per-path queue bound: with no live path, or when the
        chosen path's queue is full, the packet is dropped here.
        """
        self._now = now
        if not packet:
            self._drop("empty_packet")
            return False
        if self._sprays:
            lane = self._pick_lane()
            if lane is None:
                if self._closed:
                    self._drop("closed")
                else:
                    self._drop("queue_full" if self._live else "no_path")
                return False
            path = lane
        else:
            path_id = self._pick_flow(flow_key(packet))
            if path_id is None:
                self._drop("closed" if self._closed else "no_path")
                return False
            path = self._paths[path_id]
            if path.waitsnd() >= path.limit:
                self._drop("queue_full")
                return False
        seq = self._seq
        if path.send(_DATA_HEADER.pack(_DATA, seq) + packet) < 0:
            self._drop("too_big")
            return False
        self._seq = (seq + 1) & _U32
        size = len(packet)
        if size > path.payload_max:
            path.count_fragments(size)
        path.tx_packets += 1
        path.tx_bytes += size
        self._packets_in += 1
        self._bytes_in += size
        self._dirty.add(path.path_id)
        return True

    def can_send(self) -> bool:
        """True while some live path has room; the shell stops reading the TUN if not."""
        paths = self._paths
        for path_id in self._live:
            path = paths[path_id]
            if path.waitsnd() < path.limit:
                return True
        return False

    def receive(self, path_id: int, data: bytes, now: float) -> None:
        """One authenticated KCP datagram from the peer on ``path_id``."""
        self._now = now
        path = self._paths.get(path_id)
        if path is None:
            self._drop("unknown_path")
            return
        if self._closed or self._peer_closed:
            self._drop("closed")
            return
        if len(data) < _KCP_HEADER:
            self._drop("short_datagram")
            return
        conv = int.from_bytes(data[:4], "little")
        if conv != path.conv:
            if conv & 0xFFFF != path_id:
                self._drop("wrong_path")
                return
            if not epoch_newer(conv >> 16, path.epoch):
                self._drop("stale_session")
                return
            self._restart(path, conv >> 16, now)
        kcp = path.kcp
        now_ms = round(now * 1000)  # to_ms(), inlined on the per-datagram path
        if now_ms != path.clock_ms:  # a drained batch shares one ``now``: one update
            path.pace(now)
            kcp.update(now_ms)
            path.paced()
            path.clock_ms = now_ms
        if kcp.input(data) < 0:
            self._drop("kcp_rejected")
            return
        path.last_heard = now
        path.parked = False
        self._dirty.add(path_id)
        recv = kcp.recv
        message = recv()
        while message is not None:
            if message[0] == _DATA and len(message) > 5:
                packet = message[5:]
                path.rx_packets += 1
                path.rx_bytes += len(packet)
                if not path.up:
                    self._bring_up(path)  # the peer sends DATA only on paths it holds up
                if self._peer_sprays:
                    self._reorder.push(int.from_bytes(message[1:5], "big"), packet, now)
                else:
                    self._inbox_append(packet)
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
            now_ms = to_ms(self._now)
            paths = self._paths
            for path_id in dirty:
                path = paths.get(path_id)
                if path is not None:
                    path.pace(self._now)
                    path.kcp.update(now_ms)
                    path.kcp.flush()
                    path.paced()
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
        """When :meth:`handle_timer` is due next (absolute seconds), None when idle."""
        if self._closed or self._peer_closed:
            return None
        now_ms = to_ms(self._now)
        due = math.inf
        for path in self._paths.values():
            due = min(due, path.deadline(), path.kcp.check(now_ms) / 1000.0)
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
            kcp = path.kcp
            path.pace(now)
            kcp.update(now_ms)
            if kcp.check(now_ms) <= now_ms:
                # ikcp's update() flushes on interval ticks only, while check() already
                # reports a due retransmission: send it now instead of spinning.
                kcp.flush()
            path.paced()
            path.sample_rate(now)
            if path.up:
                reason = path.failure(now)
                if reason is not None:
                    self._take_down(path, reason, notify_peer=True)
                    self._restart(path, path.epoch + 1, now)
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
        if self._peer_sprays:
            if self._config.reorder_timeout is None:
                self._reorder.timeout = self._adaptive_reorder_timeout()
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
        now_ms = to_ms(now)
        for path in self._paths.values():
            path.send_control(close)
            path.kcp.update(now_ms)
            path.kcp.flush()
            path.up = False
            path.down_reason = "closed"
        self._closed = True
        self._dirty.clear()
        self._live = ()
        self._update_schedulers()

    # -- status ------------------------------------------------------------------------

    def snapshot(self) -> BondSnapshot:
        """Counters as of the latest ``now`` the bond was given."""
        now = self._now
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
                rate_pps=round(path.rate, 1),
                restarts=path.restarts,
                last_heard_ago_s=None if path.last_heard is None else now - path.last_heard,
                down_reason=path.down_reason,
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
        )

    # -- internals ---------------------------------------------------------------------

    def _output_for(self, path_id: int) -> Callable[[bytes], None]:
        append = self._outbox.append

        def output(datagram: bytes) -> None:
            append((path_id, datagram))

        return output

    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def _send_hello(self, path: Path, now: float) -> None:
        path.send_control(path.hello(now, self._sprays))
        self._dirty.add(path.path_id)

    def _restart(self, path: Path, epoch: int, now: float, *, announce: bool = True) -> None:
        """Fresh KCP session ``epoch`` for ``path``: announced by an immediate HELLO, or
        parked (silent until the peer speaks on it)."""
        epoch &= 0xFFFF
        path.restart(epoch, now)
        self._epochs[path.path_id] = epoch
        path.parked = not announce
        if announce:
            self._send_hello(path, now)

    def _bring_up(self, path: Path) -> None:
        path.up = True
        path.down_reason = None
        self._update_live()
        self._events.append(PathUp(path.path_id))

    def _take_down(self, path: Path, reason: str, *, notify_peer: bool) -> None:
        """Mark ``path`` down; tell the peer over the survivors when we found out first."""
        was_up = path.up
        path.up = False
        path.down_reason = reason
        path.last_heard = None
        if was_up:
            self._update_live()
            self._events.append(PathDown(path.path_id, reason))
            if self._peer_sprays:
                # Whatever the dead path still carried is lost with its session: stop
                # waiting for it.  Gaps of live paths are released too; their packets
                # still go out when they arrive, just late (see ReorderBuffer).
                self._reorder.expire(math.inf)
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
        self._consistent.set_paths({pid: self._weights.get(pid, 1.0) for pid in self._live})
        self._spray.set_paths(self._paths[pid] for pid in self._live)

    def _on_control(self, path: Path, message: bytes, now: float) -> None:
        parsed = messages.parse_message(message)
        if isinstance(parsed, messages.Hello):
            if parsed.sprays:
                self._peer_sprays = True
            first = path.peer_sent_ms is None
            path.on_hello(parsed, now)
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
            self._drop("linkdown_ignored")
            return
        self._take_down(target, DOWN_PEER_LINKDOWN, notify_peer=False)
        newest = notice.epoch if epoch_newer(notice.epoch, target.epoch) else target.epoch
        # The peer owns the failed link and probes when it returns: wait for it, on the
        # session epoch it will pick next, rather than queue probes it cannot hear.
        self._restart(target, newest + 1, now, announce=False)

    def _on_close(self) -> None:
        for path in self._paths.values():
            self._take_down(path, DOWN_PEER_CLOSED, notify_peer=False)
        self._peer_closed = True
        self._dirty.clear()
        self._events.append(PeerClosed())

    def _adaptive_reorder_timeout(self) -> float:
        """Wait for a gap: the one-way delay spread of the live paths plus one RTO.

        A missing packet was sent on a slower path (late by about half the difference of
        the round-trip times) and may need one retransmission (one RTO of its path).
        """
        paths = self._paths
        srtts = [paths[pid].kcp.srtt for pid in self._live]
        if not srtts:
            return self._reorder.timeout
        spread_ms = (max(srtts) - min(srtts)) / 2.0
        rto_ms = max(paths[pid].kcp.rto for pid in self._live)
        timeout = (spread_ms + rto_ms) / 1000.0
        return min(max(timeout, REORDER_TIMEOUT_MIN), REORDER_TIMEOUT_MAX)
