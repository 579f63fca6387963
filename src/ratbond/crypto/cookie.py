"""The cookie challenge: under load, only initiations from addresses that can receive count.

A flood of initiations from spoofed sources (forged, or one captured initiation replayed)
otherwise competes with the legitimate client for the per-source rate-limit table and the
server's CPU.  While the server is under load it processes an initiation only if its
``mac2`` is keyed with the *cookie* of the address it came from:

    cookie = BLAKE2s-128(key = server secret, replaced every 2 minutes, data = source IP:port)

An initiation without one (its ``mac1`` still checked first, so only PSK holders and replays
get this far) is answered with a small COOKIE_REPLY instead of any handshake work::

    nonce (24 random bytes) | ChaCha20-Poly1305(subkey, cookie, AD = the initiation's mac1)

``subkey`` is BLAKE2s(key = the client's cookie-reply key, data = nonce): a fresh key per
reply, so random nonces never repeat under one key.  The cookie-reply key is derived from that
client's PSK, and the AD binds the reply to one initiation, so only the sender of that
initiation can read it -- and only if it receives at that address: a spoofed source never
sees its cookie.  The client re-sends the same initiation with ``mac2`` at once; the flood
costs the server one or two MACs and one 72-byte reply per datagram, never smaller than what
it answers, and the legitimate client gets through after one extra round trip.

Sans-I/O: the caller passes ``now`` and the randomness source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ratbond.wire import (
    COOKIE_NONCE_SIZE,
    COOKIE_REPLY_SIZE,
    COOKIE_SIZE,
    HEADER_SIZE,
    MsgType,
    pack_header,
)

#: How long one server secret (so every cookie made with it) is accepted.
COOKIE_SECRET_LIFETIME = 120.0
#: A client stops using a cookie this long before the server would stop accepting it.
COOKIE_CLIENT_MARGIN = 10.0
_ZERO_NONCE = bytes(12)

Address = tuple[str, int]


def _subkey(cookie_key: bytes, nonce: bytes) -> bytes:
    return hashlib.blake2s(nonce, key=cookie_key, digest_size=32).digest()


def seal_cookie_reply(
    cookie_key: bytes, mac1: bytes, cookie: bytes, path_id: int, nonce: bytes
) -> bytes:
    """The COOKIE_REPLY datagram carrying ``cookie`` to the sender of the initiation whose
    ``mac1`` is given; ``nonce``: 24 random bytes."""
    sealed = ChaCha20Poly1305(_subkey(cookie_key, nonce)).encrypt(_ZERO_NONCE, cookie, mac1)
    return pack_header(MsgType.COOKIE_REPLY, path_id, 0, 0) + nonce + sealed


def open_cookie_reply(cookie_key: bytes, mac1: bytes, datagram: bytes) -> bytes | None:
    """The cookie in a COOKIE_REPLY answering the initiation with ``mac1``, or ``None``."""
    if len(datagram) != COOKIE_REPLY_SIZE:
        return None
    nonce = datagram[HEADER_SIZE:HEADER_SIZE + COOKIE_NONCE_SIZE]
    sealed = datagram[HEADER_SIZE + COOKIE_NONCE_SIZE:]
    try:
        cookie = ChaCha20Poly1305(_subkey(cookie_key, nonce)).decrypt(_ZERO_NONCE, sealed, mac1)
    except InvalidTag:
        return None
    return cookie if len(cookie) == COOKIE_SIZE else None


class CookieMaker:
    """The server's side: makes and recognises cookies under a secret that rotates."""

    __slots__ = ("_born", "_random", "_secret")

    def __init__(self, random: Callable[[int], bytes]) -> None:
        self._random = random
        self._secret = b""
        self._born = float("-inf")

    def cookie(self, addr: Address, now: float) -> bytes:
        """The cookie of ``addr`` now (a new secret is drawn once the old one aged out)."""
        if now - self._born >= COOKIE_SECRET_LIFETIME:
            self._secret = self._random(32)
            self._born = now
        # addr[:2]: an IPv6 socket gives (host, port, flowinfo, scope id)
        return hashlib.blake2s(f"{addr[0]}|{addr[1]}".encode(), key=self._secret,
                               digest_size=COOKIE_SIZE).digest()

    def nonce(self) -> bytes:
        return self._random(COOKIE_NONCE_SIZE)
