"""Handshake datagrams as bytes: building them, and the cheap MACs that guard the server.

``mac1`` (keyed BLAKE2s-128 over the whole datagram before it, key derived from the client's
PSK, found by the clear key id) is the first thing the server checks: it costs about a
microsecond and proves the sender knows that PSK, so no X25519 or AEAD work is ever spent on
a forged initiation.  ``mac2`` (the same MAC keyed with a cookie, over everything before it)
proves the sender receives datagrams at its source address; the server asks for it only
while under load (see :mod:`ratbond.crypto.cookie`).
"""

from __future__ import annotations

import hashlib
import hmac

from ratbond.wire import (
    HEADER_SIZE,
    KEY_ID_SIZE,
    MAC_SIZE,
    PREFIX,
    PREFIX_SIZE,
    CipherCode,
    ModeCode,
    MsgType,
    pack_header,
)

_NO_MAC2 = bytes(MAC_SIZE)


def compute_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def verify_mac(key: bytes, datagram: bytes) -> bool:
    """Whether the last 16 bytes of ``datagram`` are the MAC of the rest."""
    return hmac.compare_digest(compute_mac(key, datagram[:-MAC_SIZE]), datagram[-MAC_SIZE:])


def prologue(mode: int, cipher: int) -> bytes:
    """What the transcript starts from: both ends must agree on mode and cipher."""
    return b"ratbond v1" + bytes((mode, cipher))


def prefix(mode: int, cipher: int) -> bytes:
    return PREFIX.pack(mode, cipher, 0)


def handshake_datagram(
    msg_type: MsgType, path_id: int, session: int, body: bytes, mac_key: bytes | None
) -> bytes:
    """``header || body`` plus, in the authenticated modes, the MAC over both."""
    datagram = pack_header(msg_type, path_id, session, 0) + body
    if mac_key is None:
        return datagram
    return datagram + compute_mac(mac_key, datagram)


def initiation_datagram(
    path_id: int, body: bytes, mac1_key: bytes, cookie: bytes | None
) -> bytes:
    """A secure initiation: ``header || body || mac1 || mac2`` (``mac2`` zero without a
    cookie).  ``body`` starts with the prefix and the key id."""
    datagram = pack_header(MsgType.HANDSHAKE_INIT, path_id, 0, 0) + body
    datagram += compute_mac(mac1_key, datagram)
    return datagram + (compute_mac(cookie, datagram) if cookie is not None else _NO_MAC2)


def body_of(datagram: bytes, secure: bool) -> bytes:
    """The part between header and MAC (of a response)."""
    return datagram[HEADER_SIZE:-MAC_SIZE] if secure else datagram[HEADER_SIZE:]


def key_id_of(initiation: bytes) -> bytes:
    """The clear key id of a secure initiation (its length was checked)."""
    return initiation[HEADER_SIZE + PREFIX_SIZE:HEADER_SIZE + PREFIX_SIZE + KEY_ID_SIZE]


def handshake_body_of(initiation: bytes) -> bytes:
    """``ephemeral || sealed payload`` of a secure initiation (what the handshake reads)."""
    return initiation[HEADER_SIZE + PREFIX_SIZE + KEY_ID_SIZE:-2 * MAC_SIZE]


def mac1_of(initiation: bytes) -> bytes:
    return initiation[-2 * MAC_SIZE:-MAC_SIZE]


def verify_mac1(key: bytes, initiation: bytes) -> bool:
    """Whether the initiation's ``mac1`` is right under ``key`` (a client's MAC key)."""
    return hmac.compare_digest(
        compute_mac(key, initiation[:-2 * MAC_SIZE]), initiation[-2 * MAC_SIZE:-MAC_SIZE])


def verify_mac2(cookie: bytes, initiation: bytes) -> bool:
    """Whether the initiation's ``mac2`` is right under ``cookie``."""
    return hmac.compare_digest(compute_mac(cookie, initiation[:-MAC_SIZE]),
                               initiation[-MAC_SIZE:])


def describe_mode(mode: int, cipher: int) -> str:
    """A mode/cipher pair as a person reads it in a log line ("encrypted with aes-256-gcm")."""
    try:
        mode_name = ModeCode(mode).name.lower()
    except ValueError:
        mode_name = f"unknown mode {mode}"
    if cipher == CipherCode.NONE:
        return mode_name
    try:
        cipher_name = CipherCode(cipher).name.lower().replace("_", "-")
    except ValueError:
        cipher_name = f"unknown cipher {cipher}"
    return f"{mode_name} with {cipher_name}"
