"""What a connection tells its shell, as small frozen records drained with ``next_event()``.

Each names something that already happened.  The shell logs them and applies the ones
that change the host: :class:`TunnelUp` / :class:`TunnelDown` add or remove the default
route into the tunnel (client) or create the TUN (server).  Nothing here asks the shell a
question; a connection never waits for its shell to act.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A UDP peer address as the kernel reports it: (host, port) for IPv4; IPv6 sockets give
#: (host, port, flowinfo, scope_id), passed back to ``sendto`` as it came.
Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class HandshakeStarted:
    """Client: an initiation went out on every path (``reason``: why one was needed)."""

    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """Client: no session could be made yet; ``reason`` says what to fix.  Retries go on."""

    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeRefused:
    """Server: an initiation from ``addr`` was refused for a configuration reason."""

    addr: Address
    reason: str


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A session is established (the server gives the first authenticated ``addr``, and
    with a clients file the ``client`` whose credentials it used)."""

    session: int
    addr: Address | None = None
    client: str | None = None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session is over: replaced, expired, silent, closed by the peer or its client was
    removed from the clients file (server: ``client`` names it with a clients file)."""

    session: int
    reason: str
    client: str | None = None


@dataclass(frozen=True, slots=True)
class KeysRotated:
    """A rekey finished; the session goes on (for debug logs)."""

    session: int


@dataclass(frozen=True, slots=True)
class PathUp:
    """Path ``path_id`` of ``session`` carries traffic."""

    session: int
    path_id: int


@dataclass(frozen=True, slots=True)
class PathDown:
    """Path ``path_id`` of ``session`` left the bond; ``reason`` says why."""

    session: int
    path_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PathMoved:
    """Server: authenticated, fresh data of a path came from a new address (roaming, NAT)."""

    session: int
    path_id: int
    old: Address | None
    new: Address


@dataclass(frozen=True, slots=True)
class TunnelUp:
    """Client: the first path is up (install the default route).  Server: the first
    session is established (create the TUN)."""


@dataclass(frozen=True, slots=True)
class TunnelDown:
    """Client: no path is up any more (remove the default route)."""


ConnectionEvent = (
    HandshakeStarted
    | HandshakeFailed
    | HandshakeRefused
    | SessionStarted
    | SessionEnded
    | KeysRotated
    | PathUp
    | PathDown
    | PathMoved
    | TunnelUp
    | TunnelDown
)
