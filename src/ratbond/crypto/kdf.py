"""Key derivation: HKDF-SHA256 (RFC 5869) built on the standard library's HMAC.

HMAC from :mod:`hmac` keeps a handshake's dozen derivations cheap (no object per call);
``tests/unit/test_crypto_kdf.py`` checks the results against :mod:`cryptography`'s own HKDF.
"""

from __future__ import annotations

import hmac

HASH = "sha256"
HASH_SIZE = 32

_LABEL_MAC = b"ratbond v1 handshake mac"
_LABEL_PATH = b"ratbond v1 path key "
_LABEL_KEY_ID = b"ratbond v1 key id"
_LABEL_COOKIE = b"ratbond v1 cookie reply key"


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, HASH)


def hkdf(salt: bytes, ikm: bytes, count: int) -> tuple[bytes, ...]:
    """``count`` 32-byte outputs of HKDF(salt, ikm, info="") -- the Noise ``HKDF`` function."""
    prk = hmac_sha256(salt, ikm)
    outputs: list[bytes] = []
    previous = b""
    for index in range(1, count + 1):
        previous = hmac_sha256(prk, previous + bytes([index]))
        outputs.append(previous)
    return tuple(outputs)


def hkdf_expand(prk: bytes, info: bytes) -> bytes:
    """One 32-byte block of HKDF-Expand(prk, info)."""
    return hmac_sha256(prk, info + b"\x01")


def mac_key(psk: bytes) -> bytes:
    """Key of the cheap handshake MAC: anyone with the PSK can compute it, nobody else."""
    return hkdf_expand(psk, _LABEL_MAC)


def key_id(psk: bytes) -> bytes:
    """The 8-byte clear name of a credential: a one-way function of the PSK (domain-separated
    from every key), so both ends know it without a setting and it reveals nothing of the
    key.  8 bytes: accidental collisions among even a million clients are ~3e-8 likely, and
    the table refuses one at load."""
    return hkdf_expand(psk, _LABEL_KEY_ID)[:8]


def cookie_reply_key(psk: bytes) -> bytes:
    """Key sealing the cookie the server sends under load: only this client can read it."""
    return hkdf_expand(psk, _LABEL_COOKIE)


def path_key(traffic_secret: bytes, direction: bytes, path_id: int) -> bytes:
    """The AEAD key of one path in one direction (``direction`` is ``b"i2r"`` or ``b"r2i"``).

    Each path counts from 0 under its own key, so counters never repeat under one key even
    though all paths share the session's traffic secrets."""
    return hkdf_expand(traffic_secret, _LABEL_PATH + direction + path_id.to_bytes(2, "big"))
