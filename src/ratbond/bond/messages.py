"""Bond messages: what travels inside one KCP message (type byte first, network byte order).

Every KCP message on a path carries exactly one bond message:

========  ====  ==============================================================
DATA      0x01  ``seq u32`` + one IP packet.  ``seq`` counts per session and
                direction over all paths and wraps; the receiver orders and
                dedupes by it.
HELLO     0x02  ``flags u8, sent_ms u32, echo_ms u32, echo_delay_ms u32,
                rx_packets u32`` and, optionally (newer senders),
                ``send_kbps u32, receive_kbps u32``: the echo of the peer's last
                ``sent_ms`` and how long we held it give an RTT without
                synchronized clocks; ``rx_packets`` counts DATA received on this
                path; the rates are the sender's hint for this link (0 = none).
LINKDOWN  0x03  ``path_id u16, epoch u16``: the sender saw that path's session
                ``epoch`` fail; the epoch keeps a late LINKDOWN from killing a
                session that has already been restarted.
CLOSE     0x04  no body: the sender is shutting down, all its paths leave.
EXPRESS   0x05  like DATA, but handed out at once instead of waiting in the
                reorder buffer (small, latency-sensitive packets); still deduped.
                Sent only to peers whose HELLO carries :data:`FLAG_EXPRESS`.
========  ====  ==============================================================

Parsers never raise on peer input: they return a message or :class:`Malformed` with
the reason, which the caller counts.  The hot path (DATA) uses the module-level
:func:`encode_data` and :func:`data_seq` directly rather than :func:`parse_message`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

DATA: Final = 0x01
HELLO: Final = 0x02
LINKDOWN: Final = 0x03
CLOSE: Final = 0x04
EXPRESS: Final = 0x05

#: HELLO flag: the sender spreads packets per packet (round-robin, adaptive, redundant),
#: so its DATA must be put back in ``seq`` order; without it each path already carries
#: whole flows in order.
FLAG_SPRAYS: Final = 0x01
#: HELLO flag: ``echo_ms``/``echo_delay_ms`` are meaningful (a HELLO was seen before).
FLAG_ECHO: Final = 0x02
#: HELLO flag: the sender's link of this path is a backup (DATA only when no primary lives).
FLAG_BACKUP: Final = 0x04
#: HELLO flag: the sender understands EXPRESS messages.
FLAG_EXPRESS: Final = 0x08

DATA_HEADER: Final = struct.Struct(">BI")
_HELLO: Final = struct.Struct(">BBIIII")
_HELLO_RATES: Final = struct.Struct(">II")
_LINKDOWN: Final = struct.Struct(">BHH")
_CLOSE: Final = b"\x04"
_U32: Final = 0xFFFFFFFF
#: The ``seq`` of a DATA/EXPRESS message, at offset 1.
SEQ: Final = struct.Struct(">I")

#: Size of a HELLO without / with the rate hint fields.
HELLO_SIZE: Final = _HELLO.size
HELLO_SIZE_WITH_RATES: Final = _HELLO.size + _HELLO_RATES.size


class Drop(str, enum.Enum):
    """Why the bond layer dropped something; the values are the snapshot's drop keys."""

    EMPTY_PACKET = "empty_packet"
    CLOSED = "closed"
    QUEUE_FULL = "queue_full"
    NO_PATH = "no_path"
    TOO_BIG = "too_big"
    UNKNOWN_PATH = "unknown_path"
    SHORT_DATAGRAM = "short_datagram"
    WRONG_PATH = "wrong_path"
    STALE_SESSION = "stale_session"
    KCP_REJECTED = "kcp_rejected"
    LINKDOWN_IGNORED = "linkdown_ignored"
    EMPTY_MESSAGE = "empty_message"
    SHORT_DATA = "short_data"
    SHORT_HELLO = "short_hello"
    SHORT_LINKDOWN = "short_linkdown"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Data:
    """One IP packet with its bond sequence number (``express``: not to be held)."""

    seq: int
    packet: bytes
    express: bool = False


@dataclass(frozen=True, slots=True)
class Hello:
    """Liveness probe and RTT sample carrier, sent on every path every hello interval.

    ``send_kbps``/``receive_kbps`` are the sender's rate hint for its link (0 = none);
    an old HELLO without them parses with both 0.
    """

    flags: int
    sent_ms: int
    echo_ms: int
    echo_delay_ms: int
    rx_packets: int
    send_kbps: int = 0
    receive_kbps: int = 0

    @property
    def sprays(self) -> bool:
        return bool(self.flags & FLAG_SPRAYS)

    @property
    def has_echo(self) -> bool:
        return bool(self.flags & FLAG_ECHO)

    @property
    def backup(self) -> bool:
        return bool(self.flags & FLAG_BACKUP)

    @property
    def express(self) -> bool:
        return bool(self.flags & FLAG_EXPRESS)


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

    reason: Drop


Message = Data | Hello | LinkDown | Close

_pack_data_header = DATA_HEADER.pack
_unpack_seq = SEQ.unpack_from


def encode_data(seq: int, packet: bytes, express: bool = False) -> bytes:
    """DATA (or EXPRESS) carrying ``packet``; ``seq`` is taken modulo 2**32."""
    return _pack_data_header(EXPRESS if express else DATA, seq & _U32) + packet


def data_seq(message: bytes) -> int:
    """The ``seq`` of a DATA/EXPRESS message the caller already checked is long enough."""
    seq: int = _unpack_seq(message, 1)[0]
    return seq


def encode_hello(hello: Hello) -> bytes:
    body = _HELLO.pack(
        HELLO,
        hello.flags & 0xFF,
        hello.sent_ms & _U32,
        hello.echo_ms & _U32,
        hello.echo_delay_ms & _U32,
        hello.rx_packets & _U32,
    )
    if hello.send_kbps or hello.receive_kbps:
        body += _HELLO_RATES.pack(hello.send_kbps & _U32, hello.receive_kbps & _U32)
    return body


def encode_linkdown(path_id: int, epoch: int) -> bytes:
    return _LINKDOWN.pack(LINKDOWN, path_id & 0xFFFF, epoch & 0xFFFF)


def encode_close() -> bytes:
    return _CLOSE


def parse_message(data: bytes) -> Message | Malformed:
    """Decode one bond message; anything wrong comes back as :class:`Malformed`."""
    if not data:
        return Malformed(Drop.EMPTY_MESSAGE)
    kind = data[0]
    size = len(data)
    if kind in (DATA, EXPRESS):
        if size <= DATA_HEADER.size:
            return Malformed(Drop.SHORT_DATA)
        return Data(data_seq(data), data[DATA_HEADER.size :], kind == EXPRESS)
    if kind == HELLO:
        # Longer HELLOs are accepted so a later version may append counters.
        if size < _HELLO.size:
            return Malformed(Drop.SHORT_HELLO)
        _, flags, sent, echo, delay, rx = _HELLO.unpack_from(data)
        send_kbps = receive_kbps = 0
        if size >= HELLO_SIZE_WITH_RATES:
            send_kbps, receive_kbps = _HELLO_RATES.unpack_from(data, _HELLO.size)
        return Hello(flags, sent, echo, delay, rx, send_kbps, receive_kbps)
    if kind == LINKDOWN:
        if size < _LINKDOWN.size:
            return Malformed(Drop.SHORT_LINKDOWN)
        _, path_id, epoch = _LINKDOWN.unpack_from(data)
        return LinkDown(path_id, epoch)
    if kind == CLOSE:
        return Close()
    return Malformed(Drop.UNKNOWN_MESSAGE_TYPE)
