"""The server end of a tunnel as one sans-I/O object: channel, client sessions, policy.

:class:`ServerConnection` owns the :class:`~ratbond.crypto.ServerChannel` and one
:class:`~ratbond.bond.Bond` per client session, and decides what the shell used to: when a
session opens (its first authenticated datagram), which session of a client owns that
client's TUN (the newest: one session per client), where each path's datagrams go (the
address its latest authenticated, fresh datagram came from, so NAT rebinding and a new
WAN lease are followed and a forged source gets nothing), and when a silent session is
reaped.

Clients: without credentials (``--secret`` alone) there is one client, :data:`DEFAULT_CLIENT`,
and every session is its (today's behaviour: the newest session owns the one TUN).  With a
clients file the channel names the client of each session from its key id; packets for a
client go only to that client's active session, and packets out of a session are handed to
the shell per client (:meth:`ServerConnection.packets_by_client`), each checked against the
client's allowed source addresses first: a packet with a source the client does not own is
dropped and counted (``spoofed_source``), so one client cannot impersonate another.

The shell (``ratbond.runtime.server``) owns the UDP socket and the TUN(s), feeds datagrams
with their source address and TUN packets (with the client whose TUN they came from), and
after every batch drains :meth:`~ServerConnection.datagrams_to_send` (datagram,
destination) pairs, :meth:`~ServerConnection.packets_received` (one TUN) or
:meth:`~ServerConnection.packets_by_client`, and :meth:`~ServerConnection.next_event`, and
arms one timer at :meth:`~ServerConnection.get_timer`.  Nothing a peer sends makes a method
raise.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

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
from ratbond.crypto import DropCounters, NotConnectedError, ServerChannel, UnknownSessionError
from ratbond.crypto import HandshakeRefused as ChannelRefused
from ratbond.crypto import KeysRotated as ChannelRotated
from ratbond.crypto import SessionClosed as ChannelClosed
from ratbond.crypto import SessionEstablished as ChannelEstablished
from ratbond.crypto.credentials import CredentialTable

REASON_REPLACED = "replaced by a newer session of its client"
REASON_SILENT = "silent"
REASON_PEER_CLOSED = "client closed it"
REASON_REMOVED = "its client was removed or changed in the clients file"

#: The one client of a server without a clients file.
DEFAULT_CLIENT = "default"


class SourceFilter(Protocol):
    """Which packets a client may send into its TUN (``ratbond.clients.AllowedIps``)."""

    def permits(self, packet: bytes) -> bool: ...


@dataclass
class ClientCounters:
    """Per client: what reached its TUN, what it was sent, and what was dropped."""

    rx_packets: int = 0  # from its session, handed to its TUN
    tx_packets: int = 0  # from its TUN, accepted by its session
    tx_no_session: int = 0  # from its TUN while it had no session
    tx_dropped: int = 0  # refused by its session's bond (full)
    spoofed_source: int = 0  # from its session with a source address it does not own
    sessions: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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
    client: str = DEFAULT_CLIENT
    due: float | None = None  # its next deadline as last scheduled (bond timer or reaping)
    closed: bool = False


class ServerConnection:
    """Every client session of one server socket."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        now: float,
        wall_offset: float = 0.0,
        random: Callable[[int], bytes] = os.urandom,
        credentials: CredentialTable | None = None,
        allowed: Mapping[str, SourceFilter] | None = None,
    ) -> None:
        self.config = config
        self.counters = ServerCounters()
        self._named = credentials is not None
        if credentials is None:
            self._channel = ServerChannel(config.channel, random=random, limits=config.limits)
        else:
            self._channel = ServerChannel(config.channel, random=random, limits=config.limits,
                                          credentials=credentials)
        self._wall_offset = wall_offset
        self._sessions: dict[int, ClientSession] = {}
        self._active: dict[str, ClientSession] = {}
        self._allowed: dict[str, SourceFilter] = dict(allowed or {})
        self.client_counters: dict[str, ClientCounters] = {}
        #: Clients whose spoofed packets were dropped since the shell last looked (it logs
        #: them, rate-limited, and clears this).
        self.spoofed: dict[str, int] = {}
        # Work is per touched session, never a sweep over every client: a session the last
        # batch touched may have output (_dirty), packets (_received) or a new deadline
        # (_touched); deadlines sit in a heap (stale entries are skipped when popped).
        self._dirty: dict[ClientSession, None] = {}
        self._received: dict[ClientSession, None] = {}
        self._touched: dict[ClientSession, None] = {}
        self._timers: list[tuple[float, int, ClientSession]] = []
        self._timer_seq = itertools.count()
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
        self._dirty[sess] = self._touched[sess] = None
        if payload:
            bond.receive(path_id, payload, now)
            self._received[sess] = None
        self._poll_channel(now)
        self._poll_bond(sess)

    def send_packet(self, packet: bytes, now: float, client: str = DEFAULT_CLIENT) -> bool:
        """One IP packet from ``client``'s TUN, for that client's session; False if dropped."""
        sess = self._active.get(client)
        counters = self.client_counters.get(client)
        if counters is None:
            counters = self._counters_of(client)
        if sess is None:
            self.counters.tx_no_session += 1
            counters.tx_no_session += 1
            return False
        if sess.bond.send_packet(packet, now):
            counters.tx_packets += 1
            self._dirty[sess] = self._touched[sess] = None
            return True
        counters.tx_dropped += 1
        return False

    def can_send(self, client: str = DEFAULT_CLIENT) -> bool:
        sess = self._active.get(client)
        return sess is not None and sess.bond.can_send()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """(datagram, destination) pairs: handshake answers, then every session's data."""
        out = self._channel.datagrams_to_send()
        seal = self._channel.seal
        counters = self.counters
        dirty, self._dirty = self._dirty, {}
        for sess in dirty:
            if sess.closed:
                continue
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
        """IP packets for the one TUN of a server without a clients file; drained."""
        return self.packets_by_client().get(DEFAULT_CLIENT, [])

    def packets_by_client(self) -> dict[str, list[bytes]]:
        """IP packets for each client's TUN, from its active session, each source checked
        against the client's allowed addresses (the rest counted ``spoofed_source``)."""
        out: dict[str, list[bytes]] = {}
        active = self._active
        received, self._received = self._received, {}
        for sess in received:
            if sess.closed:
                continue
            got = sess.bond.packets_received()
            if not got:
                continue
            client = sess.client
            if active.get(client) is not sess:
                self.counters.rx_inactive += len(got)
                continue
            counters = self.client_counters.get(client) or self._counters_of(client)
            allowed = self._allowed.get(client)
            if allowed is not None:
                permits = allowed.permits
                kept = [packet for packet in got if permits(packet)]
                if len(kept) != len(got):
                    counters.spoofed_source += len(got) - len(kept)
                    self.spoofed[client] = self.spoofed.get(client, 0) + len(got) - len(kept)
                got = kept
            counters.rx_packets += len(got)
            if got:
                out.setdefault(client, []).extend(got)
        return out

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    # -- time ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        due = self._channel.get_timer()
        timers = self._timers
        if self._touched:
            touched, self._touched = self._touched, {}
            for sess in touched:
                self._schedule(sess)
        while timers and (timers[0][2].closed or timers[0][2].due != timers[0][0]):
            heapq.heappop(timers)  # superseded by a later schedule, or its session is gone
        if timers and (due is None or timers[0][0] < due):
            due = timers[0][0]
        return due

    def handle_timer(self, now: float) -> None:
        """Channel timers, the timers of the bonds that are due, and the reaping of silent
        sessions (only due sessions are visited: the cost does not grow with clients)."""
        self._now = now
        self._channel.handle_timer(now)
        self._poll_channel(now)
        self.get_timer()  # schedule what the last batch touched
        reap_after = self.config.reap_after
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, sess = heapq.heappop(timers)
            if sess.closed or sess.due != due:
                continue
            sess.due = None
            self._dirty[sess] = self._touched[sess] = None
            if now - sess.last_heard >= reap_after:
                self._close(sess, REASON_SILENT)
                continue
            sess.bond.handle_timer(now)
            self._poll_bond(sess)

    def _schedule(self, sess: ClientSession) -> None:
        """Put the session's next deadline in the heap (if it moved)."""
        if sess.closed:
            return
        due = sess.last_heard + self.config.reap_after
        bond_due = sess.bond.get_timer()
        if bond_due is not None and bond_due < due:
            due = bond_due
        if due != sess.due:
            sess.due = due
            heapq.heappush(self._timers, (due, next(self._timer_seq), sess))

    def close(self, now: float) -> None:
        """Say CLOSE to every client; pull :meth:`datagrams_to_send` once more."""
        self._closed = True
        for sess in self._sessions.values():
            sess.bond.close(now)
            self._dirty[sess] = self._touched[sess] = None

    # -- status -------------------------------------------------------------------------

    @property
    def channel_stats(self) -> DropCounters:
        return self._channel.stats

    @property
    def sessions(self) -> tuple[ClientSession, ...]:
        return tuple(self._sessions.values())

    @property
    def active(self) -> ClientSession | None:
        """The session that owns the TUN of a server without a clients file, if any."""
        return self._active.get(DEFAULT_CLIENT)

    def active_of(self, client: str) -> ClientSession | None:
        """The session that owns ``client``'s TUN, if any."""
        return self._active.get(client)

    # -- clients (the clients file, reloaded on SIGHUP) ---------------------------------

    def set_allowed(self, client: str, allowed: SourceFilter | None) -> None:
        """What ``client`` may send into its TUN from now on (None: anything)."""
        if allowed is None:
            self._allowed.pop(client, None)
        else:
            self._allowed[client] = allowed
        self._counters_of(client)

    def drop_client(self, client: str, now: float) -> None:
        """End every session of ``client`` (removed or changed in the clients file) and
        forget its counters; its paths hear nothing more (no CLOSE: its key is no longer
        ours to use)."""
        self._now = now
        for sess in [s for s in self._sessions.values() if s.client == client]:
            self._close(sess, REASON_REMOVED)
        if self._named:
            self._channel.drop_client(client)
        self._allowed.pop(client, None)
        self.client_counters.pop(client, None)

    def bond_snapshot(self, session: int, now: float) -> BondSnapshot | None:
        sess = self._sessions.get(session)
        return sess.bond.snapshot(now=now) if sess is not None else None

    # -- internals ----------------------------------------------------------------------

    def _open(self, session_id: int, now: float) -> ClientSession:
        client = DEFAULT_CLIENT
        if self._named:
            # (data opened it, so it is established; the suppress is for the impossible)
            with contextlib.suppress(UnknownSessionError):
                client = self._channel.client_of(session_id) or DEFAULT_CLIENT
        sess = ClientSession(session_id, Bond(self.config.bond, now), opened=now,
                             last_heard=now, client=client)
        self._sessions[session_id] = sess
        self._touched[sess] = None
        self.counters.sessions += 1
        self._counters_of(client).sessions += 1
        return sess

    def _counters_of(self, client: str) -> ClientCounters:
        counters = self.client_counters.get(client)
        if counters is None:
            counters = self.client_counters[client] = ClientCounters()
        return counters

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
                self._events.append(SessionStarted(event.session, event.addr,
                                                   sess.client if self._named else None))
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
        """The newest established session of a client owns its TUN; the client's other
        sessions are closed."""
        for other in list(self._sessions.values()):
            if other is not sess and other.client == sess.client:
                self._close(other, REASON_REPLACED)
        self._active[sess.client] = sess
        if not self._tunnel_up:
            self._tunnel_up = True
            self._events.append(TunnelUp())

    def _close(self, sess: ClientSession, reason: str, *, tell_channel: bool = True) -> None:
        if self._sessions.pop(sess.session, None) is None:
            return
        sess.closed = True
        if tell_channel:
            self._channel.close_session(sess.session)
        if self._active.get(sess.client) is sess:
            del self._active[sess.client]
        self._events.append(SessionEnded(sess.session, reason,
                                         sess.client if self._named else None))
