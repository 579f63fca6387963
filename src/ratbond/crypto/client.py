"""The client side of the secure channel (sans-I/O: no socket, no clock).

The client initiates every handshake -- at :meth:`ClientChannel.connect`, on retry, and to
rekey -- and the shell sends the current initiation on every live path
(:meth:`~ClientChannel.initiation_for_path`) whenever :class:`HandshakeInitiated` is queued.
After a rekey the client seals with the new keys at once and keeps accepting the old ones
until the server has proven it switched (its first datagram under the new keys) plus a
grace period, so nothing in flight is lost.

A server under load answers an initiation with a COOKIE_REPLY (:mod:`ratbond.crypto.cookie`):
the client keeps the cookie per path (each path has its own source address), re-stamps that
path's initiation with ``mac2`` and queues :class:`CookieReceived` so the shell sends it again.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

from ratbond.crypto.config import DEFAULT_LIMITS, ChannelConfig, Limits
from ratbond.crypto.cookie import COOKIE_CLIENT_MARGIN, COOKIE_SECRET_LIFETIME, open_cookie_reply
from ratbond.crypto.errors import NotConnectedError
from ratbond.crypto.events import (
    ChannelEvent,
    CookieReceived,
    DropCounters,
    HandshakeCompleted,
    HandshakeFailed,
    HandshakeInitiated,
    KeysRotated,
    SessionExpired,
)
from ratbond.crypto.handshake import InitiatorHandshake, TrafficSecrets
from ratbond.crypto.kdf import cookie_reply_key, key_id, mac_key
from ratbond.crypto.messages import (
    body_of,
    describe_mode,
    handshake_datagram,
    initiation_datagram,
    mac1_of,
    prefix,
    prologue,
    verify_mac,
)
from ratbond.crypto.transport import KeySet
from ratbond.wire import (
    HEADER,
    HEADER_SIZE,
    INIT_PAYLOAD,
    PLAIN_RESP_PAYLOAD,
    PREFIX_SIZE,
    RESP_PAYLOAD,
    VERSION,
    DropReason,
    MsgType,
    RejectReason,
    describe_tunnel_info,
    handshake_size,
    parse_prefix,
    parse_reject,
)

_unpack_header = HEADER.unpack_from
_DATA = int(MsgType.DATA)
_RESPONSE = int(MsgType.HANDSHAKE_RESPONSE)
_REJECT = int(MsgType.REJECT)
_COOKIE = int(MsgType.COOKIE_REPLY)
_COOKIE_USABLE = COOKIE_SECRET_LIFETIME - COOKIE_CLIENT_MARGIN
_U64 = 2**64
#: Unanswered initiations before the client says that it cannot reach the server.
FAIL_AFTER_ATTEMPTS = 3


class _Attempt:
    """One initiation in flight: the body common to all paths and the per-path datagrams."""

    __slots__ = ("body", "cookie_paths", "datagrams", "handshake", "timestamp")

    def __init__(self, body: bytes, handshake: InitiatorHandshake | None, timestamp: int) -> None:
        self.body = body
        self.handshake = handshake
        self.timestamp = timestamp
        self.datagrams: dict[int, bytes] = {}
        self.cookie_paths: set[int] = set()  # paths whose initiation got its cookie already


class ClientChannel:
    """One per client process: one logical session to the server, any number of paths."""

    def __init__(
        self,
        config: ChannelConfig,
        *,
        random: Callable[[int], bytes] = os.urandom,
        limits: Limits = DEFAULT_LIMITS,
        client_id: bytes | None = None,
    ) -> None:
        """``client_id`` (8 bytes) names this client to the server; pass a stable one (e.g.
        derived from the host and tunnel id) so that a restarted client replaces its old
        session at once instead of leaving it to expire.  Default: random per instance."""
        if client_id is not None and len(client_id) != 8:
            raise ValueError("client_id must be 8 bytes")
        self.config = config
        self.limits = limits
        self.stats = DropCounters()
        self._random = random
        self._mode = config.mode_code
        self._cipher = config.cipher_code
        self._prefix = prefix(self._mode, self._cipher)
        self._prologue = prologue(self._mode, self._cipher)
        self._mac_key = mac_key(config.psk) if config.psk is not None else None
        self._key_id = key_id(config.psk) if config.psk is not None else b""
        self._cookie_key = cookie_reply_key(config.psk) if config.psk is not None else b""
        self._cookies: dict[int, tuple[bytes, float]] = {}  # path -> (cookie, received at)
        self._client_id = client_id if client_id is not None else random(8)
        self._events: deque[ChannelEvent] = deque()
        self._current: KeySet | None = None
        self._previous: KeySet | None = None
        self._session: int | None = None  # logical session id, stable across rekeys
        self._attempt: _Attempt | None = None
        self._attempts = 0  # initiations sent without an answer since the last success
        self._retry_at: float | None = None
        self._retry_interval = limits.handshake_retry
        self._rekey_due_at: float | None = None
        self._last_timestamp = 0
        self._last_failure_event = float("-inf")
        self._refusal: str | None = None  # why the server last refused us, until a success
        self._active = False

    def __repr__(self) -> str:
        return f"ClientChannel(mode={self.config.mode.name}, session={self._session})"

    # -- handshake -----------------------------------------------------------------------

    def connect(self, now: float, wall_clock: float) -> None:
        """Start (or restart) a handshake; the channel keeps itself connected from now on."""
        self._active = True
        self._attempts = 0
        self._retry_interval = self.limits.handshake_retry
        self._initiate(now, wall_clock)

    def forget_session(self) -> None:
        """The server ended the session (CLOSE): drop its keys, and let the next handshake
        ask for a new session instead of resuming the closed one."""
        self._current = None
        self._previous = None
        self._session = None
        self._rekey_due_at = None

    def initiation_for_path(self, path_id: int) -> bytes | None:
        """The pending initiation stamped for ``path_id``, or ``None`` if none is pending."""
        attempt = self._attempt
        if attempt is None:
            return None
        datagram = attempt.datagrams.get(path_id)
        if datagram is None:
            if self._mac_key is None:
                datagram = handshake_datagram(MsgType.HANDSHAKE_INIT, path_id, 0, attempt.body,
                                              None)
            else:
                cookie = self._cookies.get(path_id)
                datagram = initiation_datagram(path_id, attempt.body, self._mac_key,
                                               cookie[0] if cookie is not None else None)
            attempt.datagrams[path_id] = datagram
        return datagram

    @property
    def key_id(self) -> bytes:
        """The clear 8-byte name of this client's credential (empty in plaintext mode)."""
        return self._key_id

    def _initiate(self, now: float, wall_clock: float) -> None:
        # Strictly increasing even if the wall clock stalls or steps back: the server refuses
        # any initiation not newer than the last one it accepted from us.
        timestamp = max(int(wall_clock * 1e9), self._last_timestamp + 1) % _U64
        self._last_timestamp = timestamp
        payload = INIT_PAYLOAD.pack(timestamp, self._client_id, self._session or 0,
                                    self.config.tunnel_info)
        if self.config.psk is not None:
            handshake = InitiatorHandshake(
                self.config.psk, self._prologue + self._key_id, payload, self._random(32)
            )
            self._attempt = _Attempt(self._prefix + self._key_id + handshake.body, handshake,
                                     timestamp)
            self._cookies = {path: cookie for path, cookie in self._cookies.items()
                             if now - cookie[1] < _COOKIE_USABLE}
        else:
            self._attempt = _Attempt(self._prefix + payload, None, timestamp)
        self._retry_at = now + self._retry_interval
        self._rekey_due_at = None
        self._events.append(
            HandshakeInitiated(attempt=self._attempts + 1, rekey=self._current is not None)
        )

    def _on_response(self, data: bytes, session: int, counter: int, now: float) -> None:
        attempt = self._attempt
        if attempt is None:
            current = self._current
            if current is None or current.session != session:
                self.stats.handshake_unexpected += 1
            # else: another path's copy of the answer just used -- normal with several paths
            return
        head = parse_prefix(data)
        if isinstance(head, DropReason):
            self.stats.count(head)
            return
        if head.mode != self._mode or head.cipher != self._cipher:
            self.stats.mode_mismatch += 1
            return
        if len(data) != handshake_size(MsgType.HANDSHAKE_RESPONSE, self._mode) or counter != 0:
            self.stats.malformed += 1
            return
        if session == 0:
            self.stats.malformed += 1
            return
        secrets: TrafficSecrets | None = None
        if attempt.handshake is not None:
            assert self._mac_key is not None
            if not verify_mac(self._mac_key, data):
                self.stats.handshake_auth_failed += 1
                return
            result = attempt.handshake.read_response(
                session, body_of(data, True)[PREFIX_SIZE:]
            )
            if result is None:
                self.stats.handshake_auth_failed += 1
                return
            payload, secrets = result
            (logical,) = RESP_PAYLOAD.unpack(payload)
        else:
            plain = body_of(data, False)[PREFIX_SIZE:]
            logical, client_id, timestamp = PLAIN_RESP_PAYLOAD.unpack(plain)
            if client_id != self._client_id or timestamp != attempt.timestamp:
                self.stats.handshake_unexpected += 1
                return
        if logical == 0:
            self.stats.malformed += 1
            return
        self._install(session, logical, secrets, now)

    def _install(self, session: int, logical: int, secrets: TrafficSecrets | None,
                 now: float) -> None:
        keys = KeySet(
            session=session,
            logical=logical,
            secrets=secrets,
            initiator=True,
            mode=self.config.mode,
            cipher=self.config.cipher,
            created=now,
            limits=self.limits,
        )
        if self._current is not None and self._session == logical:
            self._previous = self._current  # still accepted until the server switches too
            self._current = keys
            self._events.append(KeysRotated(logical))
        else:
            self._previous = None
            self._current = keys
            self._session = logical
            self._events.append(HandshakeCompleted(logical))
        self._attempt = None
        self._attempts = 0
        self._refusal = None
        self._retry_at = None
        self._retry_interval = self.limits.handshake_retry

    def _on_reject(self, data: bytes, now: float) -> None:
        if self._attempt is None:
            self.stats.handshake_unexpected += 1
            return
        reject = parse_reject(data)
        if isinstance(reject, DropReason):
            self.stats.count(reject)
            return
        # Unauthenticated, so it only informs; the retries go on in case it was forged.
        theirs = describe_mode(reject.mode, reject.cipher)
        ours = describe_mode(self._mode, self._cipher)
        if reject.reason == RejectReason.AUTH_FAILED:
            self.stats.handshake_auth_failed += 1
            why = ("it could not authenticate this client: the --secret differs between "
                   "client and server")
        elif reject.reason == RejectReason.CLOCK_SKEW:
            self.stats.handshake_stale += 1
            why = (f"this machine's clock differs from the server's by more than "
                   f"{self.limits.clock_tolerance:g} s: fix NTP on the router")
        elif reject.reason == RejectReason.TUNNEL_MISMATCH:
            self.stats.mode_mismatch += 1
            why = (f"its tunnel addressing differs from this client's "
                   f"({describe_tunnel_info(self.config.tunnel_info)}): use the same "
                   "--tunnel-ip and --tunnel-ip6 on both ends")
        elif reject.reason == RejectReason.CIPHER_MISMATCH:
            self.stats.mode_mismatch += 1
            why = f"it runs {theirs}, this client {ours}: use the same --cipher on both ends"
        else:
            self.stats.mode_mismatch += 1
            why = (f"it runs {theirs}, this client {ours}: use the same --aes and --secret on "
                   "both ends")
        self._refusal = f"the server refused the handshake: {why}"
        self._fail(now, self._refusal)

    def _on_cookie(self, data: bytes, path_id: int, session: int, counter: int, now: float
                   ) -> None:
        """A server under load wants proof that we receive at this path's address."""
        attempt = self._attempt
        sent = attempt.datagrams.get(path_id) if attempt is not None else None
        if attempt is None or sent is None or self._mac_key is None:
            self.stats.handshake_unexpected += 1
            return
        if session != 0 or counter != 0:
            self.stats.malformed += 1
            return
        if path_id in attempt.cookie_paths:  # a copy or a replay: one cookie per initiation
            self.stats.handshake_unexpected += 1
            return
        cookie = open_cookie_reply(self._cookie_key, mac1_of(sent), data)
        if cookie is None:
            self.stats.handshake_auth_failed += 1
            return
        attempt.cookie_paths.add(path_id)
        self._cookies[path_id] = (cookie, now)
        del attempt.datagrams[path_id]  # re-stamped with mac2 on the next request
        self._events.append(CookieReceived(path_id))

    def _fail(self, now: float, reason: str) -> None:
        if now - self._last_failure_event >= self.limits.failure_event_interval:
            self._last_failure_event = now
            self._events.append(HandshakeFailed(reason))

    # -- datagrams -----------------------------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> tuple[int, bytes] | None:  # noqa: C901 - the per-datagram path, kept in one frame
        """DATA from the server -> ``(path_id, payload)``; handshake answers are consumed
        (see :meth:`next_event`); anything else is counted in :attr:`stats` and gives None."""
        if len(data) < HEADER_SIZE:
            self.stats.malformed += 1
            return None
        version, msg_type, path_id, session, counter = _unpack_header(data)
        if version != VERSION:
            self.stats.bad_version += 1
            return None
        if msg_type == _DATA:
            keys = self._current
            if keys is None or keys.session != session:
                keys = self._previous
                if keys is None or keys.session != session:
                    self.stats.unknown_session += 1
                    return None
            if now >= keys.expires or now >= keys.retired_until:  # keys.usable(now), inlined
                self.stats.key_expired += 1
                return None
            payload = keys.open(data, path_id, counter)
            if type(payload) is bytes:
                if not keys.confirmed:
                    keys.confirmed = True
                    if keys is self._current and self._previous is not None:
                        self._previous.retire(now, self.limits.key_grace)  # the server switched
                return path_id, payload
            assert isinstance(payload, DropReason)
            self.stats.count(payload)
            return None
        if msg_type == _RESPONSE:
            self._on_response(data, session, counter, now)
        elif msg_type == _REJECT:
            self._on_reject(data, now)
        elif msg_type == _COOKIE:
            self._on_cookie(data, path_id, session, counter, now)
        elif msg_type == MsgType.HANDSHAKE_INIT:
            self.stats.unexpected_type += 1
        else:
            self.stats.unknown_type += 1
        return None

    def seal(self, path_id: int, payload: bytes, now: float) -> bytes:
        """A DATA datagram carrying ``payload`` on ``path_id``; raises
        :class:`NotConnectedError` while there are no usable keys."""
        keys = self._current
        if keys is None:
            raise NotConnectedError("no session keys yet: the handshake has not completed")
        if now >= keys.expires:
            raise NotConnectedError("the session keys expired; a new handshake is under way")
        datagram = keys.seal(path_id, payload)
        if keys.wants_rekey and self._attempt is None and self._rekey_due_at is None:
            self._rekey_due_at = now
        return datagram

    @property
    def established(self) -> bool:
        return self._current is not None

    @property
    def handshaking(self) -> bool:
        """True while an initiation waits for its answer (retries are scheduled)."""
        return self._attempt is not None

    @property
    def session(self) -> int | None:
        """The logical session id (stable across rekeys), once a handshake completed."""
        return self._session

    def next_event(self) -> ChannelEvent | None:
        return self._events.popleft() if self._events else None

    # -- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        limits = self.limits
        deadlines: list[float] = []
        if self._attempt is not None and self._retry_at is not None:
            deadlines.append(self._retry_at)
        if self._rekey_due_at is not None:
            deadlines.append(self._rekey_due_at)
        current = self._current
        if current is not None:
            if self._attempt is None and self._active:
                deadlines.append(current.created + limits.rekey_after_time)
            deadlines.append(current.expires)
        previous = self._previous
        if previous is not None:
            deadlines.append(previous.expires)
            deadlines.append(previous.retired_until)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float, wall_clock: float) -> None:
        """Retry or rekey handshakes and let keys expire, as :meth:`get_timer` announced."""
        limits = self.limits
        previous = self._previous
        if previous is not None and not previous.usable(now):
            self._previous = None
        current = self._current
        if current is not None and now >= current.expires:
            self._current = None
            assert self._session is not None
            self._events.append(SessionExpired(self._session))
        if not self._active:
            return
        if self._attempt is not None:
            if self._retry_at is not None and now >= self._retry_at:
                self._attempts += 1
                if self._attempts >= FAIL_AFTER_ATTEMPTS:
                    self._fail(now, self._refusal or (
                        f"no handshake response after {self._attempts} attempts (server down "
                        "or unreachable, a firewall dropping UDP, or a different --secret)"))
                self._retry_interval = min(self._retry_interval * 2, limits.handshake_retry_max)
                self._initiate(now, wall_clock)
        elif (
            self._current is None
            or self._rekey_due_at is not None
            or now >= self._current.created + limits.rekey_after_time
        ):
            self._initiate(now, wall_clock)

