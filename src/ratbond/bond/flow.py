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
_PORTED: Final = frozenset({_TCP, _UDP})
_IPV4_NO_OPTIONS: Final = 0x45
_MIN_V4_PORTS: Final = 24  # an IPv4 header without options and two ports
_KIND_V4_PAIR: Final = b"\x14"
_KIND_V6_PORTS: Final = b"\x06"
_KIND_V6_PAIR: Final = b"\x16"


def flow_key(packet: bytes) -> bytes:
    """Key under which ``packet``'s flow is hashed onto a path; never raises."""
    if (
        len(packet) >= _MIN_V4_PORTS
        and packet[0] == _IPV4_NO_OPTIONS
        and packet[9] in _PORTED
        and not (packet[6] & 0x3F or packet[7])
    ):
        # The common case, inlined (same key as _ipv4_key gives): IPv4 without options,
        # TCP or UDP, not a fragment.
        source = packet[12:16] + packet[20:22]
        destination = packet[16:20] + packet[22:24]
        if source <= destination:
            return _KIND_V4_PORTS + packet[9:10] + source + destination
        return _KIND_V4_PORTS + packet[9:10] + destination + source
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


#: Packets shorter than this are latency-sensitive whatever they carry (bytes).
SMALL_PACKET: Final = 200
#: DSCP code points of real-time traffic: Expedited Forwarding and Class Selector 5.
DSCP_EF: Final = 46
DSCP_CS5: Final = 40
_ICMP: Final = 1
_ICMPV6: Final = 58
_DNS_PORT: Final = (53).to_bytes(2, "big")

_REALTIME_DSCP: Final = frozenset({DSCP_EF, DSCP_CS5})

#: :func:`packet_class` results.
BULK: Final = 0
SMALL: Final = 1
REALTIME: Final = 2  # DSCP EF or CS5 (also small, whatever its size)


def packet_class(packet: bytes) -> int:
    """BULK, SMALL (under SMALL_PACKET bytes, so every pure TCP ACK; ICMP; DNS) or
    REALTIME (DSCP EF/CS5); never raises.  (The bond inlines the common bulk case.)"""
    size = len(packet)
    if size < 2:
        return SMALL
    version = packet[0] >> 4
    if version == 4:
        dscp = packet[1] >> 2
    elif version == 6:
        dscp = ((packet[0] & 0x0F) << 2) | (packet[1] >> 6)
    else:
        return SMALL if size < SMALL_PACKET else BULK
    if dscp in _REALTIME_DSCP:
        return REALTIME
    if size < SMALL_PACKET:
        return SMALL
    return _transport_class(packet, version)


def _transport_class(packet: bytes, version: int) -> int:
    """SMALL for ICMP and DNS, else BULK (``packet`` is SMALL_PACKET bytes or more)."""
    size = len(packet)
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        proto = packet[9]
        fragment = packet[6] & 0x3F or packet[7]
    else:
        header = 40
        proto = packet[6]
        fragment = 0
    if proto in (_ICMP, _ICMPV6):
        return SMALL
    if fragment or proto != _UDP or size < header + 4:
        return BULK
    ports = packet[header : header + 4]
    return SMALL if _DNS_PORT in (ports[:2], ports[2:]) else BULK
