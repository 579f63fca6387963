"""Events the channels queue for the shell, and the drop counters they keep."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ratbond.wire import DropReason


@dataclass(frozen=True)
class HandshakeInitiated:
    """Client: a new initiation is ready; send ``initiation_for_path(p)`` on every live path."""

    attempt: int
    rekey: bool


@dataclass(frozen=True)
class HandshakeCompleted:
    """Client: keys for ``session`` are in place.  A different ``session`` than before means
    the server lost the old one (restart): the shell starts its session state afresh."""

    session: int


@dataclass(frozen=True)
class KeysRotated:
    """A rekey finished; the logical session continues unchanged (for debug logs).  On the
    server ``client`` names the credential (``""``: the single-client setup, and always on
    the client side)."""

    session: int
    client: str = ""


@dataclass(frozen=True)
class HandshakeFailed:
    """Client: no session yet or the server refused; retries continue (rate-limited event)."""

    reason: str


@dataclass(frozen=True)
class SessionExpired:
    """Client: the keys aged out before a rekey succeeded; ``seal`` refuses until one does."""

    session: int


@dataclass(frozen=True)
class SessionEstablished:
    """Server: a client proved its new keys with authenticated data arriving from ``addr``;
    ``client`` is its credential's name (``""`` in the single-client setup)."""

    session: int
    addr: tuple[str, int]
    client: str = ""


@dataclass(frozen=True)
class SessionClosed:
    """Server: ``session`` of ``client`` is gone (``"expired"``, ``"replaced"`` by the same
    client, or ``"removed"``: its credential left or changed in a reload)."""

    session: int
    reason: str
    client: str = ""


@dataclass(frozen=True)
class CookieReceived:
    """Client: the server is under load and sent a cookie for ``path_id``: send
    ``initiation_for_path(path_id)`` on that path again (it now carries the cookie MAC)."""

    path_id: int


@dataclass(frozen=True)
class HandshakeRefused:
    """Server: an initiation from ``addr`` was refused for a configuration reason (mode or
    cipher mismatch, clock out of tolerance); rate-limited, for one clear log line."""

    addr: tuple[str, int]
    reason: str


ChannelEvent = (
    HandshakeInitiated
    | HandshakeCompleted
    | KeysRotated
    | HandshakeFailed
    | SessionExpired
    | SessionEstablished
    | SessionClosed
    | HandshakeRefused
    | CookieReceived
)


@dataclass
class DropCounters:
    """Datagrams dropped, by reason (field names are the :class:`DropReason` values)."""

    malformed: int = 0
    bad_version: int = 0
    unknown_type: int = 0
    unexpected_type: int = 0
    unknown_session: int = 0
    auth_failed: int = 0
    replayed: int = 0
    key_expired: int = 0
    too_many_paths: int = 0
    handshake_rate_limited: int = 0
    handshake_auth_failed: int = 0
    handshake_stale: int = 0
    handshake_unexpected: int = 0
    handshake_table_full: int = 0
    mode_mismatch: int = 0
    handshake_needs_cookie: int = 0
    handshake_replayed: int = 0
    unknown_key: int = 0

    def count(self, reason: DropReason) -> None:
        name = reason.value
        setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def total(self) -> int:
        return sum(asdict(self).values())
