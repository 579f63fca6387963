"""Bond messages: what travels inside one KCP message (type byte first, network byte order).

Every KCP message on a path carries exactly one bond message:

========  ====  ==============================================================
DATA      0x01  ``seq u32`` + one IP packet.  ``seq`` counts per session and
                direction over all paths and wraps; the receiver orders and
                dedupes by it.
HELLO     0x02  ``flags u8, sent_ms u32, echo_ms u32, echo_delay_ms u32,
                rx_packets u32``: the echo of the peer's last ``sent_ms`` and
                how long we held it give an RTT without synchronized clocks;
                ``rx_packets`` counts DATA received on this path.
LINKDOWN  0x03  ``path_id u16, epoch u16``: the sender saw that path's session
                ``epoch`` fail; the epoch keeps a late LINKDOWN from killing a
                session that has already been restarted.
CLOSE     0x04  no body: the sender is shutting down, all its paths leave.
========  ====  ==============================================================

Parsers never raise on peer input: they return a message or :class:`Malformed` with
the reason, which the caller counts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

DATA: Final = 0x01
HELLO: Final = 0x02
LINKDOWN: Final = 0x03
CLOSE: Final = 0x04

#: HELLO flag: the sender spreads packets per packet (round-robin), so its DATA must be
#: put back in ``seq`` order; without it each path already carries whole flows in order.
FLAG_SPRAYS: Final = 0x01
#: HELLO flag: ``echo_ms``/``echo_delay_ms`` are meaningful (a HELLO was seen before).
FLAG_ECHO: Final = 0x02

DATA_HEADER: Final = struct.Struct(">BI")
_HELLO: Final = struct.Struct(">BBIIII")
_LINKDOWN: Final = struct.Struct(">BHH")
_CLOSE: Final = b"\x04"
_U32: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Data:
    """One IP packet with its bond sequence number."""

    seq: int
    packet: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    """Liveness probe and RTT sample carrier, sent on every path every hello interval."""

    flags: int
    sent_ms: int
    echo_ms: int
    echo_delay_ms: int
    rx_packets: int

    @property
    def sprays(self) -> bool:
        return bool(self.flags & FLAG_SPRAYS)

    @property
    def has_echo(self) -> bool:
        return bool(self.flags & FLAG_ECHO)


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The peer saw session ``epoch`` of path ``path_id`` fail."""

    path_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class Close:
    """The peer is shutting down."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that did not parse; ``reason`` names the drop counter."""

    reason: str


Message = Data | Hello | LinkDown | Close


def encode_data(seq: int, packet: bytes) -> bytes:
    """DATA carrying ``packet``; ``seq`` is taken modulo 2**32."""
    return DATA_HEADER.pack(DATA, seq & _U32) + packet


def encode_hello(hello: Hello) -> bytes:
    return _HELLO.pack(
        HELLO,
        hello.flags & 0xFF,
        hello.sent_ms & _U32,
        hello.echo_ms & _U32,
        hello.echo_delay_ms & _U32,
        hello.rx_packets & _U32,
    )


def encode_linkdown(path_id: int, epoch: int) -> bytes:
    return _LINKDOWN.pack(LINKDOWN, path_id & 0xFFFF, epoch & 0xFFFF)


def encode_close() -> bytes:
    return _CLOSE


def parse_message(data: bytes) -> Message | Malformed:
    """Decode one bond message; anything wrong comes back as :class:`Malformed`."""
    if not data:
        return Malformed("empty_message")
    kind = data[0]
    size = len(data)
    if kind == DATA:
        if size <= DATA_HEADER.size:
            return Malformed("short_data")
        return Data(int.from_bytes(data[1:5], "big"), data[5:])
    if kind == HELLO:
        # Longer HELLOs are accepted so a later version may append counters.
        if size < _HELLO.size:
            return Malformed("short_hello")
        _, flags, sent, echo, delay, rx = _HELLO.unpack_from(data)
        return Hello(flags, sent, echo, delay, rx)
    if kind == LINKDOWN:
        if size < _LINKDOWN.size:
            return Malformed("short_linkdown")
        _, path_id, epoch = _LINKDOWN.unpack_from(data)
        return LinkDown(path_id, epoch)
    if kind == CLOSE:
        return Close()
    return Malformed("unknown_message_type")
