"""Framing: the header layout is pinned byte by byte; parsers never raise on junk."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from ratbond.wire import (
    COOKIE_REPLY_SIZE,
    HEADER_SIZE,
    PLAIN_INIT_SIZE,
    PLAIN_RESP_SIZE,
    REJECT_SIZE,
    SECURE_INIT_SIZE,
    SECURE_RESP_SIZE,
    CipherCode,
    DropReason,
    Header,
    ModeCode,
    MsgType,
    Prefix,
    Reject,
    RejectReason,
    describe_tunnel_info,
    handshake_size,
    pack_header,
    pack_reject,
    pack_tunnel_info,
    parse_header,
    parse_prefix,
    parse_reject,
)


def test_header_layout_is_pinned() -> None:
    header = pack_header(MsgType.DATA, 0x0102, 0x03040506, 0x0708090A0B0C0D0E)
    assert header == bytes.fromhex("01 03 0102 03040506 0708090a0b0c0d0e")
    assert HEADER_SIZE == 16
    assert parse_header(header + b"payload") == Header(1, 3, 0x0102, 0x03040506,
                                                       0x0708090A0B0C0D0E)


def test_message_type_numbers_are_pinned() -> None:
    assert [int(t) for t in MsgType] == [1, 2, 3, 4, 5]
    assert [t.name for t in MsgType] == [
        "HANDSHAKE_INIT", "HANDSHAKE_RESPONSE", "DATA", "REJECT", "COOKIE_REPLY"]


def test_handshake_sizes_and_no_amplification() -> None:
    # The secure initiation: 16 header + 4 prefix + 8 key id + 32 ephemeral + 42 payload
    # + 16 tag + 16 mac1 + 16 mac2.
    assert (SECURE_INIT_SIZE, SECURE_RESP_SIZE, COOKIE_REPLY_SIZE) == (150, 88, 72)
    assert (PLAIN_INIT_SIZE, PLAIN_RESP_SIZE, REJECT_SIZE) == (62, 40, 20)
    assert COOKIE_REPLY_SIZE <= SECURE_INIT_SIZE
    for mode in ModeCode:
        assert handshake_size(MsgType.HANDSHAKE_RESPONSE, mode) <= handshake_size(
            MsgType.HANDSHAKE_INIT, mode)


def test_parse_header_drop_reasons() -> None:
    assert parse_header(b"") is DropReason.MALFORMED
    assert parse_header(bytes(15)) is DropReason.MALFORMED
    assert parse_header(b"\x02\x03" + bytes(14)) is DropReason.BAD_VERSION
    assert parse_header(b"\x01\x00" + bytes(14)) is DropReason.UNKNOWN_TYPE
    assert parse_header(b"\x01\x06" + bytes(14)) is DropReason.UNKNOWN_TYPE
    assert parse_header(b"\x01\x03" + bytes(14)) == Header(1, 3, 0, 0, 0)


def test_prefix_and_reject() -> None:
    body = pack_header(MsgType.HANDSHAKE_INIT, 0, 0, 0) + bytes([2, 1, 0, 0])
    assert parse_prefix(body) == Prefix(ModeCode.ENCRYPTED, CipherCode.CHACHA20_POLY1305)
    assert parse_prefix(body[:-1]) is DropReason.MALFORMED
    assert parse_prefix(body[:-1] + b"\x01") is DropReason.MALFORMED  # reserved must be 0
    reject = pack_reject(RejectReason.MODE_MISMATCH, ModeCode.PLAINTEXT, CipherCode.NONE, 9)
    assert reject == bytes.fromhex("01 04 0009 00000000 0000000000000000 01 00 00 00")
    assert parse_reject(reject) == Reject(1, 0, 0)
    assert parse_reject(reject + b"x") is DropReason.MALFORMED
    assert parse_reject(reject[:-4] + b"\x09\x00\x00\x00") is DropReason.MALFORMED


@given(st.binary(max_size=200))
def test_parsers_never_raise(data: bytes) -> None:
    for parse in (parse_header, parse_prefix, parse_reject):
        result = parse(data)
        assert isinstance(result, (tuple, DropReason))


def test_tunnel_info_packs_both_families_and_reads_back_for_people() -> None:
    v4 = ipaddress.IPv4Network("10.10.10.0/30")
    v6 = ipaddress.IPv6Network("fd00:7262:6f6e:6400::/64")
    info = pack_tunnel_info(v4, v6)
    assert info == bytes([10, 10, 10, 0, 30]) + v6.network_address.packed + bytes([64])
    assert describe_tunnel_info(info) == ("--tunnel-ip=10.10.10.0/30 "
                                          "--tunnel-ip6=fd00:7262:6f6e:6400::/64")
    assert describe_tunnel_info(pack_tunnel_info(v4, None)) == (
        "--tunnel-ip=10.10.10.0/30 --tunnel-ip6=none")
    assert describe_tunnel_info(b"short") == "unknown addressing"
