"""The server side of the secure channel (sans-I/O: no socket, no clock).

Datagrams are told apart by the header's session (key id) and path id, never by source
address.  What an initiation costs the server, in order: a token from its source's bucket,
a length and prefix check, one BLAKE2s MAC; only then the AEAD and, for a fresh timestamp,
one X25519.  The answer is never larger than the initiation.

A handshake only creates a *pending* key set.  The session counts as established -- the
event is emitted, an older session of the same client is replaced, a rekey takes effect --
when the first authenticated DATA datagram under the new keys arrives: that needs the
initiator's ephemeral secret, so a replayed initiation can never displace a live session.

Timestamp rule: per client (its random 8-byte id inside the authenticated payload) the server
remembers the newest initiation timestamp it answered and refuses any initiation not
strictly newer, and any initiation more than ``clock_tolerance`` away from its own wall
clock.  The table is bounded; an evicted or forgotten (restart) entry only lets a capture of
the last ``clock_tolerance`` seconds be answered, which key confirmation makes harmless.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable

from ratbond.crypto.config import DEFAULT_LIMITS, ChannelConfig, ChannelMode, Limits
from ratbond.crypto.errors import NotConnectedError, UnknownSessionError
from ratbond.crypto.events import (
    ChannelEvent,
    DropCounters,
    HandshakeRefused,
    KeysRotated,
    SessionClosed,
    SessionEstablished,
)
from ratbond.crypto.handshake import ResponderHandshake, TrafficSecrets
from ratbond.crypto.kdf import mac_key
from ratbond.crypto.messages import (
    body_of,
    describe_mode,
    handshake_datagram,
    prefix,
    prologue,
    verify_mac,
)
from ratbond.crypto.ratelimit import TokenBuckets
from ratbond.crypto.transport import KeySet
from ratbond.wire import (
    HEADER,
    HEADER_SIZE,
    INIT_PAYLOAD,
    KEY_SIZE,
    PLAIN_RESP_PAYLOAD,
    PREFIX_SIZE,
    RESP_PAYLOAD,
    VERSION,
    DropReason,
    ModeCode,
    MsgType,
    RejectReason,
    describe_tunnel_info,
    handshake_size,
    pack_reject,
    parse_prefix,
)

Address = tuple[str, int]

_unpack_header = HEADER.unpack_from
_DATA = int(MsgType.DATA)
_INIT = int(MsgType.HANDSHAKE_INIT)
_MAX_CACHED_RESPONSES = 1024
_MODES = frozenset(int(mode) for mode in ModeCode)


class _Client:
    """What the server remembers about one client id across its sessions and handshakes."""

    __slots__ = ("newest_timestamp", "pending", "session")

    def __init__(self) -> None:
        self.newest_timestamp = -1
        self.pending: KeySet | None = None  # answered, not yet confirmed by DATA
        self.session: int | None = None  # its live logical session


class _Session:
    __slots__ = ("client_id", "current", "logical", "previous")

    def __init__(self, logical: int, client_id: bytes, current: KeySet) -> None:
        self.logical = logical
        self.client_id = client_id
        self.current = current
        self.previous: KeySet | None = None


class _CachedResponse:
    """The answer to one initiation, resent (re-stamped per path) for copies on other paths."""

    __slots__ = ("body", "expires", "session")

    def __init__(self, body: bytes, session: int, expires: float) -> None:
        self.body = body
        self.session = session
        self.expires = expires


class ServerChannel:
    """One per server process: any number of clients, each with one logical session."""

    def __init__(
        self,
        config: ChannelConfig,
        *,
        random: Callable[[int], bytes] = os.urandom,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.config = config
        self.limits = limits
        self.stats = DropCounters()
        self._random = random
        self._secure = config.mode is not ChannelMode.PLAINTEXT
        self._mode = config.mode_code
        self._cipher = config.cipher_code
        self._prefix = prefix(self._mode, self._cipher)
        self._prologue = prologue(self._mode, self._cipher)
        self._mac_key = mac_key(config.psk) if config.psk is not None else None
        self._buckets = TokenBuckets(
            limits.handshake_rate, limits.handshake_burst, limits.rate_table_size
        )
        self._keys: dict[int, KeySet] = {}  # header session id -> keys (pending, live, old)
        self._pending: OrderedDict[int, KeySet] = OrderedDict()  # in creation order
        self._sessions: dict[int, _Session] = {}  # logical id -> session
        self._clients: OrderedDict[bytes, _Client] = OrderedDict()
        self._responses: OrderedDict[bytes, _CachedResponse] = OrderedDict()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[ChannelEvent] = deque()
        self._last_refused_event = float("-inf")

    def __repr__(self) -> str:
        return f"ServerChannel(mode={self.config.mode.name}, sessions={len(self._sessions)})"

    @property
    def sessions(self) -> tuple[int, ...]:
        """The logical ids of the established sessions."""
        return tuple(self._sessions)

    # -- datagrams -----------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, addr: Address, now: float, wall_clock: float
    ) -> tuple[int, int, bytes] | None:
        """Authenticated, fresh DATA -> ``(session, path_id, payload)``: only then may the
        shell move the path to ``addr``.  Initiations queue answers; the rest is counted."""
        if len(data) < HEADER_SIZE:
            self.stats.malformed += 1
            return None
        version, msg_type, path_id, session, counter = _unpack_header(data)
        if version != VERSION:
            self.stats.bad_version += 1
            return None
        if msg_type == _DATA:
            keys = self._keys.get(session)
            if keys is None:
                self.stats.unknown_session += 1
                return None
            if now >= keys.expires or now >= keys.retired_until:  # keys.usable(now), inlined
                self.stats.key_expired += 1
                return None
            payload = keys.open(data, path_id, counter)
            if type(payload) is bytes:
                if not keys.confirmed:
                    self._confirm(keys, addr, now)
                return keys.logical, path_id, payload
            assert isinstance(payload, DropReason)
            self.stats.count(payload)
            return None
        if msg_type == _INIT:
            self._on_initiation(data, addr, now, wall_clock)
        elif msg_type in (MsgType.HANDSHAKE_RESPONSE, MsgType.REJECT):
            self.stats.unexpected_type += 1
        else:
            self.stats.unknown_type += 1
        return None

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Handshake answers queued since the last call, each with its destination."""
        out, self._outbox = self._outbox, []
        return out

    def seal(self, session: int, path_id: int, payload: bytes, now: float) -> bytes:
        """A DATA datagram for ``session`` on ``path_id``; raises :class:`UnknownSessionError`
        for a session that is not established (or was closed)."""
        state = self._sessions.get(session)
        if state is None:
            raise UnknownSessionError(f"no established session {session:#010x}")
        keys = state.current
        if now >= keys.expires:
            raise NotConnectedError(f"the keys of session {session:#010x} expired")
        return keys.seal(path_id, payload)

    def next_event(self) -> ChannelEvent | None:
        return self._events.popleft() if self._events else None

    def close_session(self, session: int) -> None:
        """Forget ``session`` and its keys (no event); unknown ids are ignored."""
        self._drop_session(session)

    # -- handshake -----------------------------------------------------------------------

    def _on_initiation(self, data: bytes, addr: Address, now: float, wall_clock: float) -> None:
        stats = self.stats
        _, _, path_id, session, counter = HEADER.unpack_from(data)
        if not self._buckets.allow(addr[0], now):
            stats.handshake_rate_limited += 1
            return
        head = parse_prefix(data)
        if isinstance(head, DropReason):
            stats.count(head)
            return
        # Well-formed for the mode it claims, or it is junk (and gets no answer at all).
        if head.mode not in _MODES or session != 0 or counter != 0 or len(data) != (
                handshake_size(MsgType.HANDSHAKE_INIT, ModeCode(head.mode))):
            stats.malformed += 1
            return
        if head.mode != self._mode or head.cipher != self._cipher:
            stats.mode_mismatch += 1
            theirs = describe_mode(head.mode, head.cipher)
            ours = describe_mode(self._mode, self._cipher)
            if head.mode != self._mode:
                self._reject(RejectReason.MODE_MISMATCH, path_id, addr)
                self._refused(addr, now, f"a client runs {theirs}, this server {ours}: use the "
                                         "same --aes and --secret on both ends")
            else:
                self._reject(RejectReason.CIPHER_MISMATCH, path_id, addr)
                self._refused(addr, now, f"a client runs {theirs}, this server {ours}: use the "
                                         "same --cipher on both ends")
            return
        if self._mac_key is not None and not verify_mac(self._mac_key, data):
            stats.handshake_auth_failed += 1
            self._reject(RejectReason.AUTH_FAILED, path_id, addr)
            self._refused(addr, now, "a handshake failed authentication: that client's "
                                     "--secret differs from this server's (or someone is "
                                     "probing the port)")
            return
        body = body_of(data, self._secure)[PREFIX_SIZE:]
        # Copies of one initiation arrive on every path: answer each from the cache.
        identity = body[:KEY_SIZE] if self._secure else body
        cached = self._responses.get(identity)
        if cached is not None and cached.expires > now:
            self._respond(cached.body, cached.session, path_id, addr)
            return
        self._handshake(body, identity, addr, path_id, now=now, wall_clock=wall_clock)

    def _handshake(
        self, body: bytes, identity: bytes, addr: Address, path_id: int, *, now: float,
        wall_clock: float,
    ) -> None:
        stats = self.stats
        responder: ResponderHandshake | None = None
        if self.config.psk is not None:
            responder = ResponderHandshake.read_initiation(self.config.psk, self._prologue, body)
            if responder is None:
                stats.handshake_auth_failed += 1
                return
            payload = responder.payload
        else:
            payload = body
        timestamp, client_id, resume, tunnel_info = INIT_PAYLOAD.unpack(payload)
        client = self._clients.get(client_id)
        refusal = self._refusal(timestamp, tunnel_info, client, wall_clock,
                                secure=responder is not None)
        if refusal is not None:
            reason, why = refusal
            if reason is not None:
                self._reject(reason, path_id, addr)
                self._refused(addr, now, why)
            return
        if client is None:
            client = self._new_client(client_id)
            if client is None:
                stats.handshake_table_full += 1
                return
        session = self._new_session_id()
        live = self._sessions.get(resume) if resume else None
        logical = resume if live is not None and live.client_id == client_id else session
        secrets: TrafficSecrets | None = None
        if responder is not None:
            answer = responder.write_response(session, RESP_PAYLOAD.pack(logical), self._random(32))
            if answer is None:
                stats.handshake_auth_failed += 1
                return
            reply, secrets = answer
        else:
            reply = PLAIN_RESP_PAYLOAD.pack(logical, client_id, timestamp)
        keys = KeySet(
            session=session, logical=logical, secrets=secrets, initiator=False,
            mode=self.config.mode, cipher=self.config.cipher, created=now, limits=self.limits,
            client_id=client_id,
        )
        if client.pending is not None:  # one unconfirmed handshake per client at a time
            self._forget_pending(client.pending)
        client.pending = keys
        client.newest_timestamp = timestamp
        self._keys[session] = keys
        self._pending[session] = keys
        while len(self._pending) > self.limits.max_pending:
            self._forget_pending(next(iter(self._pending.values())))
        cached = _CachedResponse(self._prefix + reply, session,
                                 now + self.limits.response_cache_time)
        self._responses[identity] = cached
        while len(self._responses) > _MAX_CACHED_RESPONSES:
            self._responses.popitem(last=False)
        self._respond(cached.body, session, path_id, addr)

    def _refusal(self, timestamp: int, tunnel_info: bytes, client: _Client | None,
                 wall_clock: float, *, secure: bool) -> tuple[RejectReason | None, str] | None:
        """Why an authenticated initiation is not answered, or None to answer it.

        A reason comes with a REJECT and a log line for the user; ``(None, ...)`` is a silent
        drop (a replay, or an older copy overtaken by a newer one).
        """
        stats = self.stats
        if secure:
            if abs(timestamp / 1e9 - wall_clock) > self.limits.clock_tolerance:
                stats.handshake_stale += 1
                return RejectReason.CLOCK_SKEW, (
                    "the client's clock differs from ours by more than "
                    f"{self.limits.clock_tolerance:g} s: fix NTP")
            if client is not None and timestamp <= client.newest_timestamp:
                stats.handshake_stale += 1
                return None, "stale"
        if tunnel_info != self.config.tunnel_info:
            stats.mode_mismatch += 1
            return RejectReason.TUNNEL_MISMATCH, (
                f"a client has {describe_tunnel_info(tunnel_info)}, this server "
                f"{describe_tunnel_info(self.config.tunnel_info)}: use the same --tunnel-ip "
                "and --tunnel-ip6 on both ends")
        return None

    def _respond(self, body: bytes, session: int, path_id: int, addr: Address) -> None:
        datagram = handshake_datagram(
            MsgType.HANDSHAKE_RESPONSE, path_id, session, body, self._mac_key
        )
        self._outbox.append((datagram, addr))

    def _reject(self, reason: RejectReason, path_id: int, addr: Address) -> None:
        """Tell the client why (20 bytes, less than any initiation: nothing to amplify)."""
        self._outbox.append((pack_reject(reason, self._mode, self._cipher, path_id), addr))

    def _refused(self, addr: Address, now: float, reason: str) -> None:
        if now - self._last_refused_event >= self.limits.failure_event_interval:
            self._last_refused_event = now
            self._events.append(HandshakeRefused(addr, reason))

    def _new_client(self, client_id: bytes) -> _Client | None:
        clients = self._clients
        if len(clients) >= self.limits.max_clients:
            idle = next(
                (cid for cid, c in clients.items() if c.session is None and c.pending is None),
                None,
            )
            if idle is None:
                return None
            del clients[idle]
        client = clients[client_id] = _Client()
        return client

    def _new_session_id(self) -> int:
        while True:
            candidate = int.from_bytes(self._random(4), "big")
            if candidate and candidate not in self._keys and candidate not in self._sessions:
                return candidate

    def _forget_pending(self, keys: KeySet) -> None:
        self._pending.pop(keys.session, None)
        if self._keys.get(keys.session) is keys:
            del self._keys[keys.session]
        client = self._clients.get(keys.client_id)
        if client is not None and client.pending is keys:
            client.pending = None

    def _confirm(self, keys: KeySet, addr: Address, now: float) -> None:
        """The initiator proved the new keys: make them live (see the module docstring)."""
        keys.confirmed = True
        self._pending.pop(keys.session, None)
        client = self._clients.get(keys.client_id)
        if client is None:  # evicted meanwhile: remember it again
            client = self._clients[keys.client_id] = _Client()
        if client.pending is keys:
            client.pending = None
        state = self._sessions.get(keys.logical)
        if state is not None and state.client_id == keys.client_id:
            if state.previous is not None:
                self._keys.pop(state.previous.session, None)
            state.current.retire(now, self.limits.key_grace)
            state.previous, state.current = state.current, keys
            self._events.append(KeysRotated(keys.logical))
            return
        if state is not None:  # the id was reused meanwhile: fall back to the key id
            keys.logical = keys.session
        replaced = client.session
        if replaced is not None and replaced in self._sessions:
            self._drop_session(replaced)
            self._events.append(SessionClosed(replaced, "replaced"))
        self._sessions[keys.logical] = _Session(keys.logical, keys.client_id, keys)
        client.session = keys.logical
        self._events.append(SessionEstablished(keys.logical, addr))

    def _drop_session(self, logical: int) -> None:
        state = self._sessions.pop(logical, None)
        if state is None:
            return
        for keys in (state.current, state.previous):
            if keys is not None and self._keys.get(keys.session) is keys:
                del self._keys[keys.session]
        client = self._clients.get(state.client_id)
        if client is not None and client.session == logical:
            client.session = None

    # -- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        limits = self.limits
        deadlines: list[float] = []
        if self._pending:
            deadlines.append(next(iter(self._pending.values())).created + limits.pending_timeout)
        if self._responses:
            deadlines.append(next(iter(self._responses.values())).expires)
        for state in self._sessions.values():
            deadlines.append(state.current.expires)
            previous = state.previous
            if previous is not None:
                deadlines.append(previous.retired_until)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Forget unconfirmed handshakes and old keys; close sessions whose keys expired."""
        limits = self.limits
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now < oldest.created + limits.pending_timeout:
                break
            self._forget_pending(oldest)
        while self._responses:
            identity, cached = next(iter(self._responses.items()))
            if now < cached.expires:
                break
            del self._responses[identity]
        for logical, state in list(self._sessions.items()):
            previous = state.previous
            if previous is not None and not previous.usable(now):
                state.previous = None
                if self._keys.get(previous.session) is previous:
                    del self._keys[previous.session]
            if now >= state.current.expires:
                self._drop_session(logical)
                self._events.append(SessionClosed(logical, "expired"))
