"""The client end of a tunnel as one sans-I/O object: channel, bond and session policy.

:class:`ClientConnection` owns the :class:`~ratbond.crypto.ClientChannel` and the
:class:`~ratbond.bond.Bond` of the current session and decides what the shell used to:
when to handshake (at start, on retry, to rekey, after the server fell silent, after it
closed or lost the session), which paths an initiation goes out on, when a new session
needs a new bond, and when the tunnel is up (some path is) or down.

The shell (``ratbond.runtime.client``) owns sockets, the TUN and netlink.  It tells the
connection which paths exist (:meth:`~ClientConnection.add_path` /
:meth:`~ClientConnection.remove_path`, one per WAN socket), feeds it datagrams and TUN
packets, and after every batch drains, in this order::

    for path_id, datagram in conn.datagrams_to_send(now): send on that path's socket
    for packet in conn.packets_received(): write to the TUN
    while (event := conn.next_event()) is not None: log; TunnelUp/TunnelDown -> routes
    read the TUN only while conn.can_send(); arm one timer at conn.get_timer()

Nothing a peer or the network does makes a method raise: bad datagrams are counted by the
channel and the bond, and data that cannot be sealed (no keys yet, keys expired while the
server is away) is counted in :attr:`ClientConnection.counters` and dropped.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ratbond.bond import Bond, BondSnapshot, LinkRate, PeerClosed
from ratbond.bond import PathDown as BondPathDown
from ratbond.bond import PathUp as BondPathUp
from ratbond.connection.config import ConnectionConfig
from ratbond.connection.errors import PathExistsError, UnknownPathError
from ratbond.connection.events import (
    ConnectionEvent,
    HandshakeFailed,
    HandshakeStarted,
    KeysRotated,
    PathDown,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelDown,
    TunnelUp,
)
from ratbond.crypto import (
    ChannelEvent,
    ClientChannel,
    CookieReceived,
    DropCounters,
    NotConnectedError,
)
from ratbond.crypto import HandshakeCompleted as ChannelCompleted
from ratbond.crypto import HandshakeFailed as ChannelFailed
from ratbond.crypto import HandshakeInitiated as ChannelInitiated
from ratbond.crypto import KeysRotated as ChannelRotated
from ratbond.crypto import SessionExpired as ChannelExpired

#: Why an initiation was sent (the ``reason`` of :class:`HandshakeStarted`).
REASON_CONNECT = "connect"
REASON_RETRY = "retry"
REASON_REKEY = "rekey"
REASON_SILENCE = "server silent"
REASON_EXPIRED = "keys expired"
REASON_CLOSED = "server closed the session"

NO_PATH_REASON = ("no WAN link is up, so nothing could be sent to the server: no interface "
                  "has a default route in a table of its own (see 'Deploying the client')")


@dataclass(frozen=True)
class _PathRole:
    """What the shell said about a path when it added it."""

    backup: bool
    rate_hint: LinkRate | None


@dataclass
class ClientCounters:
    """What the connection itself dropped or did (the channel and bond count their own)."""

    rx_datagrams: int = 0
    rx_authenticated: int = 0
    tx_datagrams: int = 0
    tx_unsealed: int = 0  # bond output dropped: no usable keys (handshake under way)
    tx_no_session: int = 0  # TUN packets offered before any session existed
    handshakes_started: int = 0
    handshake_no_path: int = 0  # initiations that had no path to go out on
    sessions: int = 0
    rekeys: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ClientConnection:
    """One client's tunnel to one server, over any number of paths."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        now: float,
        wall_offset: float = 0.0,
        client_id: bytes | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``wall_offset`` maps ``now`` to Unix time (handshake timestamps); the shell keeps
        it current with :meth:`set_wall_offset`, so a clock stepped by NTP is followed."""
        self.config = config
        self.counters = ClientCounters()
        self._channel = ClientChannel(config.channel, random=random, limits=config.limits,
                                      client_id=client_id)
        self._wall_offset = wall_offset
        self._bond: Bond | None = None
        self._session: int | None = None
        self._paths: dict[int, _PathRole] = {}
        self._outbox: list[tuple[int, bytes]] = []
        self._events: deque[ConnectionEvent] = deque()
        self._last_heard = now
        self._tunnel_up = False
        self._connecting = False
        self._next_reason: str | None = None  # why the next initiation goes out

    # -- lifecycle ----------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start handshaking; from now on the connection keeps itself connected."""
        self._connecting = True
        self._start_handshake(now, REASON_CONNECT)

    def close(self, now: float) -> None:
        """Say CLOSE on every path; pull :meth:`datagrams_to_send` once more to send it."""
        self._connecting = False
        if self._bond is not None:
            self._bond.close(now)
        self._set_tunnel(False)

    def set_wall_offset(self, offset: float) -> None:
        """Unix time minus the shell's monotonic ``now`` (re-read by the shell now and then)."""
        self._wall_offset = offset

    # -- paths --------------------------------------------------------------------------

    def add_path(self, path_id: int, now: float, *, backup: bool = False,
                 rate_hint: LinkRate | None = None) -> None:
        """A path exists (its socket is open): a pending initiation goes out on it at once,
        and an established session starts a KCP session on it.  A ``backup`` path carries
        data only while no primary path is up; ``rate_hint`` caps and seeds its estimate
        (both are kept for every later session and told to the server)."""
        if path_id in self._paths:
            raise PathExistsError(f"path {path_id} exists already")
        self._paths[path_id] = _PathRole(backup, rate_hint)
        datagram = self._channel.initiation_for_path(path_id)
        if datagram is not None:
            self._outbox.append((path_id, datagram))
        if self._bond is not None:
            self._bond.add_path(path_id, now, backup=backup, rate_hint=rate_hint)
        self._poll(now)

    def remove_path(self, path_id: int, now: float, reason: str) -> None:
        """The path is gone (its WAN went down): it leaves the bond, LINKDOWN goes out on
        the survivors, and its flows move."""
        if path_id not in self._paths:
            raise UnknownPathError(path_id)
        del self._paths[path_id]
        self._outbox = [(pid, data) for pid, data in self._outbox if pid != path_id]
        bond = self._bond
        if bond is not None and bond.has_path(path_id):
            bond.remove_path(path_id, now, reason)
        self._poll(now)

    @property
    def paths(self) -> frozenset[int]:
        return frozenset(self._paths)

    # -- data ---------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> None:
        """One datagram from any path socket.  The path it belongs to is the one its
        authenticated header names (the socket it came in on does not matter)."""
        self.counters.rx_datagrams += 1
        opened = self._channel.receive_datagram(data, now)
        if opened is not None:
            self.counters.rx_authenticated += 1
            self._last_heard = now
            path_id, payload = opened
            bond = self._bond
            if bond is not None and payload:
                bond.receive(path_id, payload, now)
        self._poll(now)

    def send_packet(self, packet: bytes, now: float) -> bool:
        """One IP packet from the TUN; False when it was dropped (counted)."""
        bond = self._bond
        if bond is None:
            self.counters.tx_no_session += 1
            return False
        return bond.send_packet(packet, now)

    def can_send(self) -> bool:
        """True while some live path has room: the shell reads the TUN only then."""
        bond = self._bond
        return bond is not None and bond.can_send()

    def datagrams_to_send(self, now: float) -> list[tuple[int, bytes]]:
        """(path id, datagram) pairs to send, each on its path's socket; drained."""
        out = self._outbox
        self._outbox = []
        bond = self._bond
        if bond is not None:
            pending = bond.datagrams_to_send()
            if pending:
                seal = self._channel.seal
                base = len(out)
                try:
                    for path_id, data in pending:
                        out.append((path_id, seal(path_id, data, now)))
                except NotConnectedError:
                    # No usable keys (the server has been away past the key lifetime): the
                    # bond's datagrams are lost like on a dead link; the handshake retries.
                    self.counters.tx_unsealed += len(pending) - (len(out) - base)
        self.counters.tx_datagrams += len(out)
        return out

    def packets_received(self) -> list[bytes]:
        """IP packets for the TUN, in order; drained."""
        bond = self._bond
        return bond.packets_received() if bond is not None else []

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    # -- time ---------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due (absolute ``now`` seconds), None when idle."""
        due = self._channel.get_timer()
        bond = self._bond
        if bond is not None:
            bond_due = bond.get_timer()
            if bond_due is not None and (due is None or bond_due < due):
                due = bond_due
        silence = self._silence_deadline()
        if silence is not None and (due is None or silence < due):
            due = silence
        return due

    def handle_timer(self, now: float) -> None:
        """Run whatever is due: handshake retries and rekeys, KCP and HELLO timers,
        liveness, and the re-handshake after a silent server."""
        self._channel.handle_timer(now, now + self._wall_offset)
        bond = self._bond
        if bond is not None:
            bond.handle_timer(now)
        silence = self._silence_deadline()
        if silence is not None and now >= silence:
            self._start_handshake(now, REASON_SILENCE)
        self._poll(now)

    # -- status -------------------------------------------------------------------------

    @property
    def session(self) -> int | None:
        return self._session

    @property
    def tunnel_up(self) -> bool:
        """Some path is up: traffic for the tunnel can flow."""
        return self._tunnel_up

    @property
    def channel_stats(self) -> DropCounters:
        return self._channel.stats

    def bond_snapshot(self, now: float) -> BondSnapshot | None:
        return self._bond.snapshot(now=now) if self._bond is not None else None

    def live_paths(self) -> list[int]:
        return self._bond.live_paths() if self._bond is not None else []

    # -- internals ----------------------------------------------------------------------

    def _silence_deadline(self) -> float | None:
        """When to suspect the server lost the session: nothing heard on any path."""
        if self._session is None or not self._paths or not self._connecting:
            return None
        if self._channel.handshaking:
            return None  # the channel's own retries (backing off) are under way
        return self._last_heard + self.config.silence_limit

    def _start_handshake(self, now: float, reason: str) -> None:
        self._next_reason = reason
        self._channel.connect(now, now + self._wall_offset)
        self._poll(now)

    def _poll(self, now: float) -> None:
        """Act on what the channel and the bond queued, in the order they queued it."""
        channel = self._channel
        while (event := channel.next_event()) is not None:
            self._on_channel_event(event, now)
        bond = self._bond
        if bond is None:
            return
        changed = False
        while (bond_event := bond.next_event()) is not None:
            session = self._session or 0
            if isinstance(bond_event, BondPathUp):
                changed = True
                self._events.append(PathUp(session, bond_event.path_id))
            elif isinstance(bond_event, BondPathDown):
                changed = True
                self._events.append(PathDown(session, bond_event.path_id, bond_event.reason))
            elif isinstance(bond_event, PeerClosed):
                self._on_peer_closed(now)
                return
        if changed:
            self._set_tunnel(bool(bond.live_paths()))

    def _on_channel_event(self, event: ChannelEvent, now: float) -> None:
        if isinstance(event, ChannelInitiated):
            self._send_initiations(event.attempt, event.rekey)
        elif isinstance(event, CookieReceived):
            # The server is under load: the same initiation again, now with the cookie MAC.
            datagram = self._channel.initiation_for_path(event.path_id)
            if datagram is not None and event.path_id in self._paths:
                self._outbox.append((event.path_id, datagram))
        elif isinstance(event, ChannelCompleted | ChannelRotated):
            self._last_heard = now
            if self._session is None or event.session != self._session:
                # A first session, one after the server closed ours, or the server lost
                # ours (restart): either way a new bond.
                self._new_session(event.session, now)
            elif isinstance(event, ChannelRotated):
                self.counters.rekeys += 1
                self._events.append(KeysRotated(event.session))
        elif isinstance(event, ChannelFailed):
            reason = event.reason if self._paths else NO_PATH_REASON
            self._events.append(HandshakeFailed(reason))
        elif isinstance(event, ChannelExpired):
            # The channel starts a new handshake on its own; say why it happens.
            self._next_reason = REASON_EXPIRED

    def _on_peer_closed(self, now: float) -> None:
        """The server said CLOSE (it is stopping): forget the session, and handshake
        afresh (no resume: the server is dropping that session) until it is back."""
        self._end_session(REASON_CLOSED)
        self._channel.forget_session()
        if self._connecting:
            self._start_handshake(now, REASON_CLOSED)

    def _send_initiations(self, attempt: int, rekey: bool) -> None:
        """An attempt goes out on every path: the first answer wins."""
        reason = self._next_reason or (REASON_REKEY if rekey else REASON_RETRY)
        self._next_reason = None
        self.counters.handshakes_started += 1
        if not self._paths:
            self.counters.handshake_no_path += 1
        initiation = self._channel.initiation_for_path
        for path_id in sorted(self._paths):
            datagram = initiation(path_id)
            if datagram is not None:
                self._outbox.append((path_id, datagram))
        self._events.append(HandshakeStarted(attempt, reason))

    def _new_session(self, session: int, now: float) -> None:
        """The server gave a session we did not have (first one, or it lost ours)."""
        if self._session is not None:
            self._end_session("the server started a new session")
        self._session = session
        self.counters.sessions += 1
        bond = Bond(self.config.bond, now)
        for path_id, role in sorted(self._paths.items()):
            bond.add_path(path_id, now, backup=role.backup, rate_hint=role.rate_hint)
        self._bond = bond
        self._events.append(SessionStarted(session))

    def _end_session(self, reason: str) -> None:
        if self._session is not None:
            self._events.append(SessionEnded(self._session, reason))
        self._session = None
        self._bond = None
        self._set_tunnel(False)

    def _set_tunnel(self, up: bool) -> None:
        if up != self._tunnel_up:
            self._tunnel_up = up
            self._events.append(TunnelUp() if up else TunnelDown())
