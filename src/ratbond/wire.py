"""Datagram framing between KCP and the UDP socket (sans-I/O, never raises on peer input).

Every datagram starts with the same 16-byte clear header, network byte order::

    version u8 (=1) | type u8 | path_id u16 | session u32 | counter u64

The whole header is the AEAD associated data of the datagram; ``session || counter`` (its last
12 bytes) is the AEAD nonce.  What follows depends on the type:

* ``DATA``: the sealed KCP bytes (ciphertext and tag, or clear payload and tag, or clear
  payload alone in plaintext mode).
* ``HANDSHAKE_INIT`` / ``HANDSHAKE_RESPONSE``: a 4-byte prefix in clear (``mode u8 | cipher u8
  | reserved u16``) so a peer configured differently is recognised without any crypto, then
  the mode's handshake body (layouts below, sizes fixed per mode).  In the authenticated
  modes an initiation carries, right after the prefix, the client's 8-byte key id in clear
  (which credential to check it with: one dict lookup) and ends with two MACs: ``mac1``
  keyed from that client's PSK, ``mac2`` keyed with a cookie the server handed out (zero
  unless the server is under load and asked for one).
* ``COOKIE_REPLY``: the server's answer to an initiation it will not process while under load
  without a valid ``mac2``: ``nonce (24) | sealed cookie (16 + tag)``, readable only by the
  holder of that client's PSK and bound to the initiation's ``mac1``.
* ``REJECT``: ``reason u8 | mode u8 | cipher u8 | reserved u8``, sent by a server that refuses
  an initiation because the two ends are configured differently (mode, cipher, secret) or
  their clocks disagree.  It is unauthenticated, never larger than what it answers, and
  only ever produces a log line on the client.

Parsers check every length before reading and return a typed value or a :class:`DropReason`;
the channel counts drops, nothing here raises on what a peer sent.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from typing import NamedTuple

VERSION = 1

HEADER = struct.Struct("!BBHIQ")
HEADER_SIZE = HEADER.size  # 16
TAG_SIZE = 16
MAC_SIZE = 16
KEY_SIZE = 32
KEY_ID_SIZE = 8  # names the client's credential in an initiation (see crypto.credentials)
COOKIE_SIZE = 16
COOKIE_NONCE_SIZE = 24

# Handshake layouts (bytes after the header).
PREFIX = struct.Struct("!BBH")  # mode, cipher, reserved
PREFIX_SIZE = PREFIX.size  # 4
# timestamp ns, client id, session to resume (0: none), the initiator's tunnel addressing
INIT_PAYLOAD = struct.Struct("!Q8sI22s")
INIT_PAYLOAD_SIZE = INIT_PAYLOAD.size  # 42
# Tunnel addressing both ends must agree on: IPv4 network + prefix, IPv6 network + prefix
# (all zero: no IPv6).  Inside the (authenticated) initiation, so a mismatch is refused with
# a clear reason instead of a session whose every packet goes nowhere.
TUNNEL_INFO = struct.Struct("!4sB16sB")
TUNNEL_INFO_SIZE = TUNNEL_INFO.size  # 22
RESP_PAYLOAD = struct.Struct("!I")  # logical session id the server assigned or kept
RESP_PAYLOAD_SIZE = RESP_PAYLOAD.size  # 4
PLAIN_RESP_PAYLOAD = struct.Struct("!I8sQ")  # logical session, echoed client id and timestamp
REJECT_BODY = struct.Struct("!BBBx")  # reason, server mode, server cipher

# Authenticated modes: prefix | key id | ephemeral | sealed payload | mac1 | mac2, where mac1
# covers everything before it and mac2 everything before it (mac1 included).
SECURE_INIT_SIZE = (HEADER_SIZE + PREFIX_SIZE + KEY_ID_SIZE + KEY_SIZE + INIT_PAYLOAD_SIZE
                    + TAG_SIZE + 2 * MAC_SIZE)
# The response has one MAC (keyed from the client's PSK) and no key id.
SECURE_RESP_SIZE = HEADER_SIZE + PREFIX_SIZE + KEY_SIZE + RESP_PAYLOAD_SIZE + TAG_SIZE + MAC_SIZE
# Plaintext mode: prefix | payload in clear.
PLAIN_INIT_SIZE = HEADER_SIZE + PREFIX_SIZE + INIT_PAYLOAD_SIZE
PLAIN_RESP_SIZE = HEADER_SIZE + PREFIX_SIZE + PLAIN_RESP_PAYLOAD.size
REJECT_SIZE = HEADER_SIZE + REJECT_BODY.size
COOKIE_REPLY_SIZE = HEADER_SIZE + COOKIE_NONCE_SIZE + COOKIE_SIZE + TAG_SIZE

# A response is never larger than the initiation it answers (no amplification).
assert SECURE_RESP_SIZE <= SECURE_INIT_SIZE
assert PLAIN_RESP_SIZE <= PLAIN_INIT_SIZE
assert max(REJECT_SIZE, PLAIN_RESP_SIZE) <= PLAIN_INIT_SIZE <= SECURE_INIT_SIZE
assert COOKIE_REPLY_SIZE <= SECURE_INIT_SIZE


class MsgType(enum.IntEnum):
    HANDSHAKE_INIT = 1
    HANDSHAKE_RESPONSE = 2
    DATA = 3
    REJECT = 4
    COOKIE_REPLY = 5


class ModeCode(enum.IntEnum):
    """How a mode is spelled in the handshake prefix."""

    PLAINTEXT = 0
    AUTHENTICATED = 1
    ENCRYPTED = 2


class CipherCode(enum.IntEnum):
    NONE = 0
    CHACHA20_POLY1305 = 1
    AES_256_GCM = 2


class RejectReason(enum.IntEnum):
    """Why a server refused an initiation (informational: a REJECT is unauthenticated)."""

    MODE_MISMATCH = 1  # --aes / --secret differ between the ends
    CIPHER_MISMATCH = 2  # --cipher differs
    AUTH_FAILED = 3  # the initiation's MAC did not verify: another --secret
    CLOCK_SKEW = 4  # the initiation's timestamp is too far from the server's clock
    TUNNEL_MISMATCH = 5  # --tunnel-ip / --tunnel-ip6 differ


class DropReason(enum.Enum):
    """Why a datagram was dropped; values are the :class:`DropCounters` field names."""

    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED_TYPE = "unexpected_type"
    UNKNOWN_SESSION = "unknown_session"
    AUTH_FAILED = "auth_failed"
    REPLAYED = "replayed"
    KEY_EXPIRED = "key_expired"
    TOO_MANY_PATHS = "too_many_paths"
    HANDSHAKE_RATE_LIMITED = "handshake_rate_limited"
    HANDSHAKE_AUTH_FAILED = "handshake_auth_failed"
    HANDSHAKE_STALE = "handshake_stale"
    HANDSHAKE_UNEXPECTED = "handshake_unexpected"
    HANDSHAKE_TABLE_FULL = "handshake_table_full"
    HANDSHAKE_NEEDS_COOKIE = "handshake_needs_cookie"
    HANDSHAKE_REPLAYED = "handshake_replayed"
    UNKNOWN_KEY = "unknown_key"
    MODE_MISMATCH = "mode_mismatch"


class Header(NamedTuple):
    """A parsed clear header (for tests and tools; the hot path unpacks in place)."""

    version: int
    type: int
    path_id: int
    session: int
    counter: int


def pack_header(msg_type: int, path_id: int, session: int, counter: int) -> bytes:
    """The 16 clear header bytes; raises ``struct.error`` on out-of-range fields (misuse)."""
    return HEADER.pack(VERSION, msg_type, path_id, session, counter)


def parse_header(data: bytes) -> Header | DropReason:
    """Read the clear header of ``data``: a :class:`Header` or why the datagram is dropped."""
    if len(data) < HEADER_SIZE:
        return DropReason.MALFORMED
    header = Header(*HEADER.unpack_from(data))
    if header.version != VERSION:
        return DropReason.BAD_VERSION
    if header.type not in _KNOWN_TYPES:
        return DropReason.UNKNOWN_TYPE
    return header


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


class Prefix(NamedTuple):
    mode: int
    cipher: int


def parse_prefix(data: bytes) -> Prefix | DropReason:
    """The clear mode/cipher prefix of a handshake datagram (after its header)."""
    if len(data) < HEADER_SIZE + PREFIX_SIZE:
        return DropReason.MALFORMED
    mode, cipher, reserved = PREFIX.unpack_from(data, HEADER_SIZE)
    if reserved != 0:
        return DropReason.MALFORMED
    return Prefix(mode, cipher)


def handshake_size(msg_type: MsgType, mode: ModeCode) -> int:
    """The one valid length of a handshake datagram of this type in this mode."""
    plain = mode is ModeCode.PLAINTEXT
    if msg_type is MsgType.HANDSHAKE_INIT:
        return PLAIN_INIT_SIZE if plain else SECURE_INIT_SIZE
    if msg_type is MsgType.HANDSHAKE_RESPONSE:
        return PLAIN_RESP_SIZE if plain else SECURE_RESP_SIZE
    raise ValueError(f"{msg_type!r} is not a handshake message")


def pack_reject(reason: RejectReason, mode: ModeCode, cipher: CipherCode, path_id: int) -> bytes:
    return pack_header(MsgType.REJECT, path_id, 0, 0) + REJECT_BODY.pack(reason, mode, cipher)


_REJECT_REASONS = frozenset(int(reason) for reason in RejectReason)


class Reject(NamedTuple):
    reason: int
    mode: int
    cipher: int


def parse_reject(data: bytes) -> Reject | DropReason:
    """The body of a REJECT datagram whose header was already parsed."""
    if len(data) != REJECT_SIZE:
        return DropReason.MALFORMED
    reason, mode, cipher = REJECT_BODY.unpack_from(data, HEADER_SIZE)
    if reason not in _REJECT_REASONS:
        return DropReason.MALFORMED
    return Reject(reason, mode, cipher)


def pack_tunnel_info(v4: ipaddress.IPv4Network, v6: ipaddress.IPv6Network | None) -> bytes:
    """The tunnel addressing as it travels in an initiation (:data:`TUNNEL_INFO`)."""
    if v6 is None:
        return TUNNEL_INFO.pack(v4.network_address.packed, v4.prefixlen, bytes(16), 0)
    return TUNNEL_INFO.pack(v4.network_address.packed, v4.prefixlen, v6.network_address.packed,
                            v6.prefixlen)


def describe_tunnel_info(info: bytes) -> str:
    """``10.10.10.0/30 and fd00::/64`` for a person reading a log line; never raises."""
    if len(info) != TUNNEL_INFO_SIZE:
        return "unknown addressing"
    v4, prefix4, v6, prefix6 = TUNNEL_INFO.unpack(info)
    if info == bytes(TUNNEL_INFO_SIZE):
        return "no addressing"
    text = f"--tunnel-ip={ipaddress.IPv4Address(v4)}/{prefix4}"
    if prefix6 == 0 and v6 == bytes(16):
        return text + " --tunnel-ip6=none"
    return text + f" --tunnel-ip6={ipaddress.IPv6Address(v6)}/{prefix6}"
