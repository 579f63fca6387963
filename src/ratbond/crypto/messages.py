"""Handshake datagrams as bytes: building them, and the cheap MAC that guards the server.

The MAC (keyed BLAKE2s-128 over the whole datagram before it, key derived from the PSK) is the
first thing the server checks after the rate limit: it costs about a microsecond and proves
the sender knows the PSK, so no X25519 or AEAD work is ever spent on a forged initiation.
"""

from __future__ import annotations

import hashlib
import hmac

from ratbond.wire import HEADER_SIZE, MAC_SIZE, PREFIX, CipherCode, ModeCode, MsgType, pack_header


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


def body_of(datagram: bytes, secure: bool) -> bytes:
    """The part between header and MAC."""
    return datagram[HEADER_SIZE:-MAC_SIZE] if secure else datagram[HEADER_SIZE:]


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
