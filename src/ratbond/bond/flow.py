"""Flow keys: which packets must stay on one path so that a flow is not reordered.

TCP and UDP are keyed by their 5-tuple (IPv4 and IPv6), everything else by its address
pair, so a ping and a TCP connection between the same hosts may use different paths but
each keeps its own.  Fragments carry ports only in the first piece, so every fragment is
keyed by the address pair alone and all pieces of a datagram travel together.  A packet
that does not parse gets its address pair when the header is there, else one fixed key:
the scheduler still needs an answer and a peer (or a local bug) must never raise here.

Keys are symmetric: a packet and its reply (source and destination swapped) get the same
key, so a download's data and the ACKs going the other way ride the same path when both
ends hash onto the same path set -- otherwise a flow would stall when *either* of two paths
dies.  Keys are short ``bytes`` (hashable, cheap to slice) tagged with a kind byte, so the
key spaces of the cases never collide.
"""

from __future__ import annotations

from typing import Final

#: Key of packets whose addresses cannot be read (empty, unknown version, truncated).
UNPARSABLE_KEY: Final = b"\x00"

_TCP: Final = 6
_UDP: Final = 17
_FRAGMENT: Final = 44
_AH: Final = 51
# Extension headers whose length byte counts 8-octet units beyond the first 8.
_EXT_8: Final = frozenset({0, 43, 60, 135, 139, 140})
_MAX_EXTENSIONS: Final = 8

_KIND_V4_PORTS: Final = b"\x04"
_KIND_V4_PAIR: Final = b"\x14"
_KIND_V6_PORTS: Final = b"\x06"
_KIND_V6_PAIR: Final = b"\x16"


def flow_key(packet: bytes) -> bytes:
    """Key under which ``packet``'s flow is hashed onto a path; never raises."""
    if not packet:
        return UNPARSABLE_KEY
    version = packet[0] >> 4
    if version == 4:
        return _ipv4_key(packet)
    if version == 6:
        return _ipv6_key(packet)
    return UNPARSABLE_KEY


def _ipv4_key(packet: bytes) -> bytes:
    size = len(packet)
    if size < 20:
        return UNPARSABLE_KEY
    header = (packet[0] & 0x0F) * 4
    proto = packet[9]
    # Ports only when the header is sane, this is not a fragment (MF flag or offset set)
    # and the transport header is long enough to hold them.
    if (
        (proto in (_TCP, _UDP))
        and header >= 20
        and size >= header + 4
        and not (packet[6] & 0x3F or packet[7])
    ):
        source = packet[12:16] + packet[header : header + 2]
        destination = packet[16:20] + packet[header + 2 : header + 4]
        return _KIND_V4_PORTS + packet[9:10] + _ordered(source, destination)
    return _KIND_V4_PAIR + _ordered(packet[12:16], packet[16:20])


def _ipv6_key(packet: bytes) -> bytes:
    size = len(packet)
    if size < 40:
        return UNPARSABLE_KEY
    proto = packet[6]
    offset = 40
    for _ in range(_MAX_EXTENSIONS):
        if proto in (_TCP, _UDP):
            if size >= offset + 4:
                source = packet[8:24] + packet[offset : offset + 2]
                destination = packet[24:40] + packet[offset + 2 : offset + 4]
                return _KIND_V6_PORTS + bytes((proto,)) + _ordered(source, destination)
            break
        if proto == _FRAGMENT or size < offset + 8:
            break
        if proto in _EXT_8:
            length = (packet[offset + 1] + 1) * 8
        elif proto == _AH:
            length = (packet[offset + 1] + 2) * 4
        else:
            break  # ICMPv6, ESP, no next header, unknown: by address pair
        proto = packet[offset]
        offset += length
    return _KIND_V6_PAIR + _ordered(packet[8:24], packet[24:40])


def _ordered(a: bytes, b: bytes) -> bytes:
    """Both endpoints in a fixed order, so either direction of a flow gives one key."""
    return a + b if a <= b else b + a
