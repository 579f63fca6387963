"""Fuzz bond messages: the parser alone, and a live bond taking them from its peer.

Half the inputs are raw KCP datagrams for the bond's path; the other half are bond
messages that the peer's genuine KCP session carries, so the fuzzer reaches the bond's
message handling (HELLO, LINKDOWN, CLOSE, DATA into the reorder buffer) without having to
guess KCP sequence numbers.
"""

from __future__ import annotations

import struct

from fuzz._common import fuzz, instrumented, split

with instrumented(__name__):
    from ratbond.bond import Bond, BondConfig, messages

_KCP_HEADER = struct.Struct("<IBBHIIII")
_PUSH = 81
#: A reorder window of 64 instead of 8192: a seq jump walks the window, and at 8192 slots
#: that walk made up most of each input's time (bounded, but it starved the fuzzer).
_CONFIG = BondConfig(hello_interval=0.5, dead_after=2.0, kcp_engine="python",
                     reorder_max_packets=64)
_PATH = 1


def established() -> tuple[Bond, Bond, float]:
    """A client bond and a server bond with path 1 up on both, and the time then."""
    client, server, now = Bond(_CONFIG, 0.0), Bond(_CONFIG, 0.0), 0.0
    client.add_path(_PATH, now)
    for _ in range(50):
        for path_id, data in client.datagrams_to_send():
            if not server.has_path(path_id):
                server.add_path(path_id, now)
            server.receive(path_id, data, now)
        for path_id, data in server.datagrams_to_send():
            client.receive(path_id, data, now)
        if client.live_paths() == [_PATH] and server.live_paths() == [_PATH]:
            return client, server, now
        now += 0.01
        client.handle_timer(now)
        server.handle_timer(now)
    raise AssertionError("the pristine pair never came up")


def _has_push(datagram: bytes) -> bool:
    """Whether a raw KCP datagram holds a PUSH segment (KCP may reassemble its data into
    messages this harness does not track)."""
    offset = 0
    while len(datagram) - offset >= _KCP_HEADER.size:
        fields = _KCP_HEADER.unpack_from(datagram, offset)
        if fields[1] == _PUSH:
            return True
        offset += _KCP_HEADER.size + fields[7]
    return False


def _carried_packets(pieces: list[bytes]) -> set[bytes]:
    packets = set()
    for piece in pieces:
        parsed = messages.parse_message(piece)
        if isinstance(parsed, messages.Data):
            packets.add(parsed.packet)
    return packets


class _World:
    """The pair the inputs go to: built once and rebuilt every :data:`RESET_EVERY` inputs
    (a fresh pair per input would cost a millisecond), so an input meets a bond that
    earlier inputs may have left in any state -- which is part of what is fuzzed."""

    RESET_EVERY = 256

    def __init__(self) -> None:
        self.client, self.server, self.now = established()
        self.allowed: set[bytes] = set()
        self.raw_push = False  # raw KCP with a PUSH went in: its DATA cannot be listed here
        self.inputs = 0

    def next(self) -> tuple[Bond, Bond, float, set[bytes]]:
        if self.inputs >= self.RESET_EVERY or self.server.live_paths() != [_PATH]:
            self.client, self.server, self.now = established()
            self.allowed = set()
            self.raw_push = False
            self.inputs = 0
        self.inputs += 1
        self.now += 0.05
        return self.client, self.server, self.now, self.allowed


_WORLD = _World()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    for piece in split(data, 8):
        parsed = messages.parse_message(piece)
        assert isinstance(parsed, (messages.Data, messages.Hello, messages.LinkDown,
                                   messages.Close, messages.Malformed)), parsed
    client, server, now, allowed = _WORLD.next()
    pieces = split(data[1:], 8)
    if data[0] & 1:
        allowed |= _carried_packets(pieces)
        peer = client._paths[_PATH]
        for piece in pieces:
            if piece:
                peer.send_control(piece)
        datagrams = [dgram for path_id, dgram in client.datagrams_to_send() if path_id == _PATH]
    else:
        datagrams = pieces
        if any(_has_push(piece) for piece in pieces):
            _WORLD.raw_push = True
    for datagram in datagrams:
        server.receive(_PATH, datagram, now)
    server.handle_timer(now + 0.01)
    for path_id, datagram in server.datagrams_to_send():
        client.receive(path_id, datagram, now + 0.01)
    client.handle_timer(now + 0.01)
    delivered = server.packets_received()
    if not _WORLD.raw_push:  # nothing reaches the TUN that no DATA message carried
        for packet in delivered:
            assert packet in allowed, packet
    while server.next_event() is not None:
        pass
    server.snapshot(now=now + 0.01)


if __name__ == "__main__":
    fuzz(test_one_input)
