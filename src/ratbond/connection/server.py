"""The server end of a tunnel as one sans-I/O object: channel, client sessions, policy.

:class:`ServerConnection` owns the :class:`~ratbond.crypto.ServerChannel` and one
:class:`~ratbond.bond.Bond` per client session, and decides what the shell used to: when a
session opens (its first authenticated datagram), which session owns the TUN (the newest:
one client per tunnel id, as in the Go original), where each path's datagrams go (the
address its latest authenticated, fresh datagram came from, so NAT rebinding and a new
WAN lease are followed and a forged source gets nothing), and when a silent session is
reaped.

The shell (``ratbond.runtime.server``) owns the UDP socket and the TUN, feeds datagrams
with their source address and TUN packets, and after every batch drains
:meth:`~ServerConnection.datagrams_to_send` (datagram, destination) pairs,
:meth:`~ServerConnection.packets_received`, and :meth:`~ServerConnection.next_event`
(:class:`~ratbond.connection.events.TunnelUp` creates the TUN), and arms one timer at
:meth:`~ServerConnection.get_timer`.  Nothing a peer sends makes a method raise.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ratbond.bond import Bond, BondSnapshot, PeerClosed
from ratbond.bond import PathDown as BondPathDown
from ratbond.bond import PathUp as BondPathUp
from ratbond.connection.config import ConnectionConfig
from ratbond.connection.events import (
    Address,
    ConnectionEvent,
    HandshakeRefused,
    KeysRotated,
    PathDown,
    PathMoved,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelUp,
)
from ratbond.crypto import DropCounters, NotConnectedError, ServerChannel
from ratbond.crypto import HandshakeRefused as ChannelRefused
from ratbond.crypto import KeysRotated as ChannelRotated
from ratbond.crypto import SessionClosed as ChannelClosed
from ratbond.crypto import SessionEstablished as ChannelEstablished

REASON_REPLACED = "replaced by a newer session of its client"
REASON_SILENT = "silent"
REASON_PEER_CLOSED = "client closed it"


@dataclass
class ServerCounters:
    """What the connection itself dropped or did (the channel and bonds count their own)."""

    rx_datagrams: int = 0
    rx_authenticated: int = 0
    rx_inactive: int = 0  # packets of a session that does not own the TUN
    tx_datagrams: int = 0
    tx_unsealed: int = 0  # bond output whose session or keys were gone
    tx_no_address: int = 0  # a path never heard from (cannot happen; counted if it does)
    tx_no_session: int = 0  # TUN packets while no session owns the TUN
    sessions: int = 0
    rekeys: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(eq=False)
class ClientSession:
    """One client session: its bond and where each of its paths was last heard from."""

    session: int
    bond: Bond
    opened: float
    last_heard: float
    addresses: dict[int, Address] = field(default_factory=dict)


class ServerConnection:
    """Every client session of one server socket."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        now: float,
        wall_offset: float = 0.0,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.counters = ServerCounters()
        self._channel = ServerChannel(config.channel, random=random, limits=config.limits)
        self._wall_offset = wall_offset
        self._sessions: dict[int, ClientSession] = {}
        self._active: ClientSession | None = None
        self._events: deque[ConnectionEvent] = deque()
        self._tunnel_up = False
        self._closed = False
        self._now = now

    def set_wall_offset(self, offset: float) -> None:
        """Unix time minus ``now`` (initiation timestamps are checked against it)."""
        self._wall_offset = offset

    # -- data ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, remote: Address, now: float) -> None:
        """One datagram from ``remote``; only authenticated, fresh data moves a path."""
        self._now = now
        self.counters.rx_datagrams += 1
        if self._closed:
            return  # shutting down: answer nobody, or a client would resume a dying session
        opened = self._channel.receive_datagram(data, remote, now, now + self._wall_offset)
        if opened is None:
            self._poll_channel(now)
            return
        self.counters.rx_authenticated += 1
        session_id, path_id, payload = opened
        sess = self._sessions.get(session_id)
        if sess is None:
            sess = self._open(session_id, now)
        sess.last_heard = now
        bond = sess.bond
        if sess.addresses.get(path_id) != remote or not bond.has_path(path_id):
            self._path_heard(sess, path_id, remote, now)
        if payload:
            bond.receive(path_id, payload, now)
        self._poll_channel(now)
        self._poll_bond(sess)

    def send_packet(self, packet: bytes, now: float) -> bool:
        """One IP packet from the TUN, for the session that owns it; False if dropped."""
        sess = self._active
        if sess is None:
            self.counters.tx_no_session += 1
            return False
        return sess.bond.send_packet(packet, now)

    def can_send(self) -> bool:
        sess = self._active
        return sess is not None and sess.bond.can_send()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """(datagram, destination) pairs: handshake answers, then every session's data."""
        out = self._channel.datagrams_to_send()
        seal = self._channel.seal
        counters = self.counters
        for sess in list(self._sessions.values()):
            pending = sess.bond.datagrams_to_send()
            if not pending:
                continue
            addresses = sess.addresses
            session_id = sess.session
            sent = 0
            try:
                for path_id, data in pending:
                    addr = addresses.get(path_id)
                    if addr is None:
                        counters.tx_no_address += 1
                    else:
                        out.append((seal(session_id, path_id, data, now), addr))
                    sent += 1
            except NotConnectedError:  # closed or expired session: its data has nowhere to go
                counters.tx_unsealed += len(pending) - sent
        counters.tx_datagrams += len(out)
        return out

    def packets_received(self) -> list[bytes]:
        """IP packets for the TUN (from the session that owns it); drained."""
        packets: list[bytes] = []
        for sess in self._sessions.values():
            got = sess.bond.packets_received()
            if not got:
                continue
            if sess is self._active:
                packets = got
            else:
                self.counters.rx_inactive += len(got)
        return packets

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    # -- time ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        due = self._channel.get_timer()
        reap_after = self.config.reap_after
        for sess in self._sessions.values():
            for candidate in (sess.bond.get_timer(), sess.last_heard + reap_after):
                if candidate is not None and (due is None or candidate < due):
                    due = candidate
        return due

    def handle_timer(self, now: float) -> None:
        """Channel timers, every bond's timers, and the reaping of silent sessions."""
        self._now = now
        self._channel.handle_timer(now)
        self._poll_channel(now)
        reap_after = self.config.reap_after
        for sess in list(self._sessions.values()):
            if now - sess.last_heard >= reap_after:
                self._close(sess, REASON_SILENT)
                continue
            sess.bond.handle_timer(now)
            self._poll_bond(sess)

    def close(self, now: float) -> None:
        """Say CLOSE to every client; pull :meth:`datagrams_to_send` once more."""
        self._closed = True
        for sess in self._sessions.values():
            sess.bond.close(now)

    # -- status -------------------------------------------------------------------------

    @property
    def channel_stats(self) -> DropCounters:
        return self._channel.stats

    @property
    def sessions(self) -> tuple[ClientSession, ...]:
        return tuple(self._sessions.values())

    @property
    def active(self) -> ClientSession | None:
        """The session that owns the TUN, if any."""
        return self._active

    def bond_snapshot(self, session: int, now: float) -> BondSnapshot | None:
        sess = self._sessions.get(session)
        return sess.bond.snapshot(now=now) if sess is not None else None

    # -- internals ----------------------------------------------------------------------

    def _open(self, session_id: int, now: float) -> ClientSession:
        sess = ClientSession(session_id, Bond(self.config.bond, now), opened=now, last_heard=now)
        self._sessions[session_id] = sess
        self.counters.sessions += 1
        return sess

    def _path_heard(self, sess: ClientSession, path_id: int, remote: Address,
                    now: float) -> None:
        """Authenticated, fresh data of a path came from ``remote``: send there from now on."""
        old = sess.addresses.get(path_id)
        sess.addresses[path_id] = remote
        if not sess.bond.has_path(path_id):
            sess.bond.add_path(path_id, now)
        if old != remote:
            self._events.append(PathMoved(sess.session, path_id, old, remote))

    def _poll_channel(self, now: float) -> None:
        channel = self._channel
        while (event := channel.next_event()) is not None:
            if isinstance(event, ChannelEstablished):
                sess = self._sessions.get(event.session) or self._open(event.session, now)
                self._events.append(SessionStarted(event.session, event.addr))
                self._activate(sess)
            elif isinstance(event, ChannelClosed):
                closed = self._sessions.get(event.session)
                if closed is not None:
                    self._close(closed, event.reason, tell_channel=False)
            elif isinstance(event, ChannelRotated):
                self.counters.rekeys += 1
                self._events.append(KeysRotated(event.session))
            elif isinstance(event, ChannelRefused):
                self._events.append(HandshakeRefused(event.addr, event.reason))

    def _poll_bond(self, sess: ClientSession) -> None:
        bond = sess.bond
        while (event := bond.next_event()) is not None:
            if isinstance(event, BondPathUp):
                self._events.append(PathUp(sess.session, event.path_id))
            elif isinstance(event, BondPathDown):
                # The address stays: the bond keeps probing a down path, so it comes back
                # as soon as the link does.
                self._events.append(PathDown(sess.session, event.path_id, event.reason))
            elif isinstance(event, PeerClosed):
                self._close(sess, REASON_PEER_CLOSED)
                return

    def _activate(self, sess: ClientSession) -> None:
        """The newest established session owns the TUN; every other one is closed."""
        for other in list(self._sessions.values()):
            if other is not sess:
                self._close(other, REASON_REPLACED)
        self._active = sess
        if not self._tunnel_up:
            self._tunnel_up = True
            self._events.append(TunnelUp())

    def _close(self, sess: ClientSession, reason: str, *, tell_channel: bool = True) -> None:
        if self._sessions.pop(sess.session, None) is None:
            return
        if tell_channel:
            self._channel.close_session(sess.session)
        if self._active is sess:
            self._active = None
        self._events.append(SessionEnded(sess.session, reason))
