"""Fuzz the clear framing: header, handshake prefix, REJECT body, tunnel-info text."""

from __future__ import annotations

from fuzz._common import fuzz, instrumented

with instrumented(__name__):
    from ratbond import wire


def test_one_input(data: bytes) -> None:
    header = wire.parse_header(data)
    assert isinstance(header, (wire.Header, wire.DropReason)), header
    if isinstance(header, wire.Header):
        assert header.version == wire.VERSION and header.type in set(wire.MsgType)
        assert wire.pack_header(header.type, header.path_id, header.session,
                                header.counter) == data[:wire.HEADER_SIZE]
    prefix = wire.parse_prefix(data)
    assert isinstance(prefix, (wire.Prefix, wire.DropReason)), prefix
    reject = wire.parse_reject(data)
    assert isinstance(reject, (wire.Reject, wire.DropReason)), reject
    if isinstance(reject, wire.Reject):
        assert len(data) == wire.REJECT_SIZE
    text = wire.describe_tunnel_info(data[wire.HEADER_SIZE:wire.HEADER_SIZE
                                          + wire.TUNNEL_INFO_SIZE])
    assert isinstance(text, str) and text


if __name__ == "__main__":
    fuzz(test_one_input)
