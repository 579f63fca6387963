"""The server side of the secure channel (sans-I/O: no socket, no clock).

Datagrams are told apart by the header's session (key id) and path id, never by source
address.  What an initiation costs the server, in order: a length and prefix check, a token
from its source's bucket, a dict lookup of its clear key id (:mod:`ratbond.crypto.credentials`:
one client's credential, never a trial of every key), one BLAKE2s MAC keyed for that client;
only then the AEAD and, for a fresh timestamp, one X25519.  The answer is never larger than
the initiation.

Under load (more than ``Limits.cookie_threshold`` initiations in a second, or the per-source
table three-quarters full) the order changes: after ``mac1`` the initiation must carry a valid
``mac2`` for its source address (:mod:`ratbond.crypto.cookie`), else it gets a COOKIE_REPLY
and nothing else; the per-source buckets then admit only such proven sources, in a table
of their own that spoofed addresses can never fill.  Unknown keys and failed MACs get no
REJECT while under load, and the same initiation (same ``mac1``) is given at most one cookie
per second whatever its source: a replayed capture costs two MACs and no reply.

A handshake only creates a *pending* key set.  The session counts as established -- the
event is emitted, an older session of the same client is replaced, a rekey takes effect --
when the first authenticated DATA datagram under the new keys arrives: that needs the
initiator's ephemeral secret, so a replayed initiation can never displace a live session.

Timestamp rule: per client (its credential's name and its random 8-byte id inside the
authenticated payload, so one client can never touch another's entry) the server remembers
the newest initiation timestamp it answered and refuses any initiation not strictly newer,
and any initiation more than ``clock_tolerance`` away from its own wall clock.  The table is
bounded; an evicted or forgotten (restart) entry only lets a capture of the last
``clock_tolerance`` seconds be answered, which key confirmation makes harmless.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from ratbond.crypto.config import DEFAULT_LIMITS, ChannelConfig, ChannelMode, Limits
from ratbond.crypto.cookie import CookieMaker, seal_cookie_reply
from ratbond.crypto.credentials import ClientCredential, CredentialEntry, CredentialTable
from ratbond.crypto.errors import ConfigError, NotConnectedError, UnknownSessionError
from ratbond.crypto.events import (
    ChannelEvent,
    DropCounters,
    HandshakeRefused,
    KeysRotated,
    SessionClosed,
    SessionEstablished,
)
from ratbond.crypto.handshake import ResponderHandshake, TrafficSecrets
from ratbond.crypto.messages import (
    describe_mode,
    handshake_body_of,
    handshake_datagram,
    key_id_of,
    mac1_of,
    prefix,
    prologue,
    verify_mac1,
    verify_mac2,
)
from ratbond.crypto.ratelimit import TokenBuckets
from ratbond.crypto.transport import KeySet
from ratbond.wire import (
    HEADER,
    HEADER_SIZE,
    INIT_PAYLOAD,
    KEY_ID_SIZE,
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
#: Who a handshake belongs to: the credential's name and the client's own 8-byte id.
ClientKey = tuple[str, bytes]

_unpack_header = HEADER.unpack_from
_DATA = int(MsgType.DATA)
_INIT = int(MsgType.HANDSHAKE_INIT)
_MAX_CACHED_RESPONSES = 1024
_MAX_CHALLENGED = 4096
_MODES = frozenset(int(mode) for mode in ModeCode)
_IDENTITY_SIZE = KEY_ID_SIZE + KEY_SIZE  # key id and ephemeral name one initiation


class _Client:
    """What the server remembers about one client id across its sessions and handshakes."""

    __slots__ = ("newest_timestamp", "pending", "session")

    def __init__(self) -> None:
        self.newest_timestamp = -1
        self.pending: KeySet | None = None  # answered, not yet confirmed by DATA
        self.session: int | None = None  # its live logical session


class _Session:
    __slots__ = ("client_id", "current", "logical", "previous")

    def __init__(self, logical: int, client_id: ClientKey, current: KeySet) -> None:
        self.logical = logical
        self.client_id = client_id
        self.current = current
        self.previous: KeySet | None = None


class _CachedResponse:
    """The answer to one initiation, resent (re-stamped per path) for copies on other paths."""

    __slots__ = ("body", "expires", "mac_key", "name", "session")

    def __init__(self, body: bytes, session: int, expires: float, entry: CredentialEntry | None
                 ) -> None:
        self.body = body
        self.session = session
        self.expires = expires
        self.mac_key = entry.mac_key if entry is not None else None
        self.name = entry.name if entry is not None else ""


class ServerChannel:
    """One per server process: any number of clients, each with one logical session."""

    def __init__(
        self,
        config: ChannelConfig,
        *,
        credentials: CredentialTable | None = None,
        random: Callable[[int], bytes] = os.urandom,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """``credentials``: the clients this server accepts (the table may be replaced in
        place later, see :meth:`reload`); ``None``: the one nameless client holding
        ``config.psk``, as before there were clients files."""
        if config.psk is None:
            if credentials is not None:
                raise ConfigError("a clients table needs an authenticated mode (a secret)")
        elif credentials is None:
            credentials = CredentialTable.single(config.psk)
        self.config = config
        self.credentials = credentials
        self.limits = limits
        self.stats = DropCounters()
        self._random = random
        self._secure = config.mode is not ChannelMode.PLAINTEXT
        self._mode = config.mode_code
        self._cipher = config.cipher_code
        self._prefix = prefix(self._mode, self._cipher)
        self._init_size = handshake_size(MsgType.HANDSHAKE_INIT, self._mode)
        self._prologue = prologue(self._mode, self._cipher)
        self._buckets = TokenBuckets(
            limits.handshake_rate, limits.handshake_burst, limits.rate_table_size
        )
        # Under load, only sources that proved they receive (a valid mac2) are admitted here.
        self._proven_buckets = TokenBuckets(
            limits.handshake_rate, limits.handshake_burst, limits.rate_table_size
        )
        self._table_busy = max(1, limits.rate_table_size * 3 // 4)
        self._cookies = CookieMaker(random)
        self._load_window_end = float("-inf")
        self._load_count = 0
        self._load_until = float("-inf")
        # mac1 of every initiation given a cookie in the current second: the same bytes again
        # from another source are a replay (a sender re-sends only with mac2), left unanswered.
        self._challenged: set[bytes] = set()
        self._keys: dict[int, KeySet] = {}  # header session id -> keys (pending, live, old)
        self._pending: OrderedDict[int, KeySet] = OrderedDict()  # in creation order
        self._sessions: dict[int, _Session] = {}  # logical id -> session
        self._clients: OrderedDict[ClientKey, _Client] = OrderedDict()
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

    def client_of(self, session: int) -> str:
        """The credential name of an established session (``""`` in the single-client setup);
        raises :class:`UnknownSessionError` for a session that is not established."""
        state = self._sessions.get(session)
        if state is None:
            raise UnknownSessionError(f"no established session {session:#010x}")
        return state.client_id[0]

    def drop_client(self, name: str) -> tuple[int, ...]:
        """Close every session and forget every handshake of client ``name`` (its credential
        was removed or changed); queues ``SessionClosed(..., "removed", name)`` for each
        session and returns their ids."""
        closed = tuple(logical for logical, state in self._sessions.items()
                       if state.client_id[0] == name)
        for logical in closed:
            self._drop_session(logical)
            self._events.append(SessionClosed(logical, "removed", name))
        for keys in [keys for keys in self._pending.values() if keys.client_id[0] == name]:
            self._forget_pending(keys)
        for key in [key for key in self._clients if key[0] == name]:
            del self._clients[key]
        for identity in [i for i, cached in self._responses.items() if cached.name == name]:
            del self._responses[identity]
        return closed

    def reload(self, credentials: Iterable[ClientCredential]) -> frozenset[str]:
        """Replace the clients table (SIGHUP) and close the sessions of every client removed
        or changed; returns those names.  Raises :class:`ConfigError` (table unchanged) on a
        duplicate name or secret."""
        if self.credentials is None:
            raise ConfigError("a plaintext server has no clients table to reload")
        gone = self.credentials.replace(credentials)
        for name in sorted(gone):
            self.drop_client(name)
        return gone

    def under_load(self, now: float) -> bool:
        """Whether initiations now need a cookie (see the module docstring)."""
        return now < self._load_until or len(self._buckets) >= self._table_busy

    # -- handshake -----------------------------------------------------------------------

    def _on_initiation(self, data: bytes, addr: Address, now: float, wall_clock: float) -> None:
        stats = self.stats
        _, _, path_id, session, counter = HEADER.unpack_from(data)
        loaded = self._count_initiation(now) if self._secure else False
        if not loaded and not self._buckets.allow(addr[0], now):
            stats.handshake_rate_limited += 1
            return
        if (len(data) != self._init_size or session != 0 or counter != 0
                or data[HEADER_SIZE:HEADER_SIZE + PREFIX_SIZE] != self._prefix):
            self._misfit(data, (path_id, session, counter), addr, now, loaded=loaded)
            return
        entry: CredentialEntry | None = None
        if self.credentials is not None:
            entry = self.credentials.lookup(key_id_of(data))
            if entry is None:
                stats.unknown_key += 1
                if not loaded:
                    self._reject(RejectReason.AUTH_FAILED, path_id, addr)
                    self._refused(addr, now, "a handshake failed authentication: that "
                                             "client's --secret differs from this server's "
                                             "(its key id matches no secret here; or someone "
                                             "is probing the port)")
                return
            if not verify_mac1(entry.mac_key, data):
                stats.handshake_auth_failed += 1
                if not loaded:
                    self._reject(RejectReason.AUTH_FAILED, path_id, addr)
                    self._refused(addr, now, "a handshake failed authentication: that client's "
                                             "--secret differs from this server's (or someone "
                                             "is probing the port)")
                return
            if loaded and not self._admitted_under_load(data, entry, addr, path_id, now):
                return
            body = handshake_body_of(data)
            identity = data[HEADER_SIZE + PREFIX_SIZE:HEADER_SIZE + PREFIX_SIZE + _IDENTITY_SIZE]
        else:
            body = identity = data[HEADER_SIZE + PREFIX_SIZE:]
        # Copies of one initiation arrive on every path: answer each from the cache.
        cached = self._responses.get(identity)
        if cached is not None and cached.expires > now:
            self._respond(cached.body, cached.session, path_id, addr, cached.mac_key)
            return
        self._handshake(body, identity, entry, addr, path_id, now=now, wall_clock=wall_clock)

    def _admitted_under_load(self, data: bytes, entry: CredentialEntry, addr: Address,
                             path_id: int, now: float) -> bool:
        """Whether an authentic initiation proves its source (a valid mac2) and has a token
        left; else it is answered with a cookie (once per initiation) or dropped."""
        stats = self.stats
        cookie = self._cookies.cookie(addr, now)
        if not verify_mac2(cookie, data):
            mac1 = mac1_of(data)
            if mac1 in self._challenged:
                stats.handshake_replayed += 1
                return False
            stats.handshake_needs_cookie += 1
            if len(self._challenged) < _MAX_CHALLENGED:
                self._challenged.add(mac1)
            self._outbox.append((seal_cookie_reply(
                entry.cookie_key, mac1, cookie, path_id, self._cookies.nonce()), addr))
            return False
        if not self._proven_buckets.allow(addr[0], now):
            stats.handshake_rate_limited += 1
            return False
        return True

    def _misfit(self, data: bytes, fields: tuple[int, int, int], addr: Address, now: float, *,
                loaded: bool) -> None:
        """An initiation not shaped as ours: junk (no answer), or another configuration
        (a REJECT saying which, unless under load).  ``fields``: path id, session, counter."""
        stats = self.stats
        path_id, session, counter = fields
        head = parse_prefix(data)
        if isinstance(head, DropReason):
            stats.count(head)
            return
        # Well-formed for the mode it claims, or it is junk (and gets no answer at all).
        if head.mode not in _MODES or session != 0 or counter != 0 or len(data) != (
                handshake_size(MsgType.HANDSHAKE_INIT, ModeCode(head.mode))):
            stats.malformed += 1
            return
        stats.mode_mismatch += 1
        if loaded:
            return
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

    def _count_initiation(self, now: float) -> bool:
        """Count one initiation towards the load measure; whether the server is under load."""
        if now >= self._load_window_end:
            self._load_window_end = now + 1.0
            self._load_count = 0
            self._challenged.clear()
        self._load_count += 1
        if self._load_count > self.limits.cookie_threshold:
            self._load_until = now + 1.0  # and for a second after the rate fell again
        if len(self._buckets) >= self._table_busy:
            self._buckets.prune(now)  # not consulted under load: let old entries go
        return now < self._load_until or len(self._buckets) >= self._table_busy

    def _handshake(
        self, body: bytes, identity: bytes, entry: CredentialEntry | None, addr: Address,
        path_id: int, *, now: float, wall_clock: float,
    ) -> None:
        stats = self.stats
        responder: ResponderHandshake | None = None
        expected_tunnel = self.config.tunnel_info
        payload = body
        if entry is not None:
            responder = ResponderHandshake.read_initiation(
                entry.credential.psk, self._prologue + entry.key_id, body)
            if responder is None:
                stats.handshake_auth_failed += 1
                return
            payload = responder.payload
            expected_tunnel = entry.credential.tunnel_info or expected_tunnel
        timestamp, own_id, resume, tunnel_info = INIT_PAYLOAD.unpack(payload)
        client_id: ClientKey = (entry.name if entry is not None else "", own_id)
        client = self._clients.get(client_id)
        refusal = self._refusal(timestamp, tunnel_info, expected_tunnel, client, wall_clock,
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
            reply = PLAIN_RESP_PAYLOAD.pack(logical, own_id, timestamp)
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
                                 now + self.limits.response_cache_time, entry)
        self._responses[identity] = cached
        while len(self._responses) > _MAX_CACHED_RESPONSES:
            self._responses.popitem(last=False)
        self._respond(cached.body, session, path_id, addr, cached.mac_key)

    def _refusal(self, timestamp: int, tunnel_info: bytes, expected_tunnel: bytes,
                 client: _Client | None, wall_clock: float, *, secure: bool,
                 ) -> tuple[RejectReason | None, str] | None:
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
        if tunnel_info != expected_tunnel:
            stats.mode_mismatch += 1
            return RejectReason.TUNNEL_MISMATCH, (
                f"a client has {describe_tunnel_info(tunnel_info)}, this server "
                f"{describe_tunnel_info(expected_tunnel)}: use the same --tunnel-ip "
                "and --tunnel-ip6 on both ends")
        return None

    def _respond(self, body: bytes, session: int, path_id: int, addr: Address,
                 mac_key: bytes | None) -> None:
        datagram = handshake_datagram(
            MsgType.HANDSHAKE_RESPONSE, path_id, session, body, mac_key
        )
        self._outbox.append((datagram, addr))

    def _reject(self, reason: RejectReason, path_id: int, addr: Address) -> None:
        """Tell the client why (20 bytes, less than any initiation: nothing to amplify)."""
        self._outbox.append((pack_reject(reason, self._mode, self._cipher, path_id), addr))

    def _refused(self, addr: Address, now: float, reason: str) -> None:
        if now - self._last_refused_event >= self.limits.failure_event_interval:
            self._last_refused_event = now
            self._events.append(HandshakeRefused(addr, reason))

    def _new_client(self, client_id: ClientKey) -> _Client | None:
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
            self._events.append(KeysRotated(keys.logical, keys.client_id[0]))
            return
        if state is not None:  # the id was reused meanwhile: fall back to the key id
            keys.logical = keys.session
        replaced = client.session
        if replaced is not None and replaced in self._sessions:
            self._drop_session(replaced)
            self._events.append(SessionClosed(replaced, "replaced", keys.client_id[0]))
        self._sessions[keys.logical] = _Session(keys.logical, keys.client_id, keys)
        client.session = keys.logical
        self._events.append(SessionEstablished(keys.logical, addr, keys.client_id[0]))

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
                self._events.append(SessionClosed(logical, "expired", state.client_id[0]))
