"""One sans-I/O protocol object per end of a tunnel (in the manner of aioquic's QuicConnection).

:class:`ClientConnection` and :class:`ServerConnection` join the secure channel
(:mod:`ratbond.crypto`) and the bond (:mod:`ratbond.bond`) and hold the session policy --
when to handshake, rekey, re-handshake after silence, replace or reap a session, where a
path's datagrams go.  They take bytes and ``now`` and return bytes and events; the shells in
:mod:`ratbond.runtime` only move bytes between them and file descriptors.
"""

from ratbond.connection.client import ClientConnection, ClientCounters
from ratbond.connection.config import ConnectionConfig
from ratbond.connection.errors import ConnectionUsageError, PathExistsError, UnknownPathError
from ratbond.connection.events import (
    Address,
    ConnectionEvent,
    HandshakeFailed,
    HandshakeRefused,
    HandshakeStarted,
    KeysRotated,
    PathDown,
    PathMoved,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelDown,
    TunnelUp,
)
from ratbond.connection.server import ClientSession, ServerConnection, ServerCounters

__all__ = [
    "Address",
    "ClientConnection",
    "ClientCounters",
    "ClientSession",
    "ConnectionConfig",
    "ConnectionEvent",
    "ConnectionUsageError",
    "HandshakeFailed",
    "HandshakeRefused",
    "HandshakeStarted",
    "KeysRotated",
    "PathDown",
    "PathExistsError",
    "PathMoved",
    "PathUp",
    "ServerConnection",
    "ServerCounters",
    "SessionEnded",
    "SessionStarted",
    "TunnelDown",
    "TunnelUp",
    "UnknownPathError",
]
