"""The secure channel between KCP and the UDP socket (sans-I/O).

Public API: :class:`ChannelConfig` (with :class:`ChannelMode`), :class:`ClientChannel`,
:class:`ServerChannel`, their events and :class:`DropCounters`, the per-client
:class:`ClientCredential` in a :class:`CredentialTable`, and :func:`load_secret` returning a
redacted :class:`Secret`.  Framing lives in :mod:`ratbond.wire`.
"""

from __future__ import annotations

from ratbond.crypto.client import ClientChannel
from ratbond.crypto.config import DEFAULT_LIMITS, ChannelConfig, ChannelMode, Limits
from ratbond.crypto.credentials import ClientCredential, CredentialTable
from ratbond.crypto.errors import (
    ConfigError,
    CryptoError,
    NotConnectedError,
    SecretError,
    UnknownSessionError,
)
from ratbond.crypto.events import (
    ChannelEvent,
    CookieReceived,
    DropCounters,
    HandshakeCompleted,
    HandshakeFailed,
    HandshakeInitiated,
    HandshakeRefused,
    KeysRotated,
    SessionClosed,
    SessionEstablished,
    SessionExpired,
)
from ratbond.crypto.secret import ENV_VAR, Secret, load_secret, stretch
from ratbond.crypto.server import ServerChannel

__all__ = [
    "DEFAULT_LIMITS",
    "ENV_VAR",
    "ChannelConfig",
    "ChannelEvent",
    "ChannelMode",
    "ClientChannel",
    "ClientCredential",
    "ConfigError",
    "CookieReceived",
    "CredentialTable",
    "CryptoError",
    "DropCounters",
    "HandshakeCompleted",
    "HandshakeFailed",
    "HandshakeInitiated",
    "HandshakeRefused",
    "KeysRotated",
    "Limits",
    "NotConnectedError",
    "Secret",
    "SecretError",
    "ServerChannel",
    "SessionClosed",
    "SessionEstablished",
    "SessionExpired",
    "UnknownSessionError",
    "load_secret",
    "stretch",
]
