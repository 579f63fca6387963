"""Bond message encoding and parsing: exact bytes, every malformed case, never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratbond.bond import messages
from ratbond.bond.messages import Close, Data, Drop, Hello, LinkDown, Malformed, parse_message


def test_data_layout_is_type_then_big_endian_seq_then_packet() -> None:
    encoded = messages.encode_data(0x01020304, b"\x45pkt")
    assert encoded == b"\x01\x01\x02\x03\x04\x45pkt"
    assert parse_message(encoded) == Data(0x01020304, b"\x45pkt")


def test_data_seq_wraps_modulo_2_32() -> None:
    assert parse_message(messages.encode_data(2**32 + 5, b"x")) == Data(5, b"x")


def test_hello_round_trip_and_layout() -> None:
    hello = Hello(messages.FLAG_ECHO | messages.FLAG_SPRAYS, 1000, 900, 25, 7)
    encoded = messages.encode_hello(hello)
    assert len(encoded) == 18
    assert encoded[:2] == b"\x02\x03"
    assert encoded[2:6] == (1000).to_bytes(4, "big")
    parsed = parse_message(encoded)
    assert parsed == hello
    assert isinstance(parsed, Hello)
    assert parsed.sprays and parsed.has_echo


def test_hello_accepts_appended_fields_from_a_later_version() -> None:
    hello = Hello(0, 1, 2, 3, 4)
    assert parse_message(messages.encode_hello(hello) + b"\x00\x09") == hello


def test_linkdown_and_close_round_trip() -> None:
    assert messages.encode_linkdown(7, 3) == b"\x03\x00\x07\x00\x03"
    assert parse_message(messages.encode_linkdown(7, 3)) == LinkDown(7, 3)
    assert parse_message(messages.encode_close()) == Close()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_message"),
        (b"\x01", "short_data"),
        (b"\x01\x00\x00\x00\x01", "short_data"),  # a seq and no packet
        (b"\x02" + bytes(16), "short_hello"),
        (b"\x03\x00\x01\x00", "short_linkdown"),
        (b"\x00", "unknown_message_type"),
        (b"\x06anything", "unknown_message_type"),
        (b"\xff", "unknown_message_type"),
    ],
)
def test_malformed_messages_name_their_drop_reason(data: bytes, reason: str) -> None:
    assert parse_message(data) == Malformed(Drop(reason))  # the enum's values are the keys


@given(st.binary(max_size=64))
def test_parse_never_raises_and_always_types_the_result(data: bytes) -> None:
    parsed = parse_message(data)
    assert isinstance(parsed, Data | Hello | LinkDown | Close | Malformed)


def test_hello_with_rate_hints_and_roles_round_trips_and_old_hellos_still_parse() -> None:
    hello = Hello(messages.FLAG_BACKUP | messages.FLAG_EXPRESS, 1, 2, 3, 4, 8000, 4000)
    encoded = messages.encode_hello(hello)
    assert len(encoded) == messages.HELLO_SIZE_WITH_RATES == 26
    assert encoded[-8:] == (8000).to_bytes(4, "big") + (4000).to_bytes(4, "big")
    parsed = parse_message(encoded)
    assert parsed == hello
    assert isinstance(parsed, Hello) and parsed.backup and parsed.express
    old = messages.encode_hello(Hello(messages.FLAG_SPRAYS, 1, 2, 3, 4))
    assert len(old) == messages.HELLO_SIZE == 18  # no hints: the old layout exactly
    assert parse_message(old) == Hello(messages.FLAG_SPRAYS, 1, 2, 3, 4, 0, 0)
    # A HELLO between the two sizes (a different later extension) keeps hints at 0.
    assert parse_message(old + b"\x00\x01") == Hello(messages.FLAG_SPRAYS, 1, 2, 3, 4)


def test_express_data_round_trips_and_is_data_with_a_flag() -> None:
    encoded = messages.encode_data(7, b"\x45ping", express=True)
    assert encoded[0] == messages.EXPRESS
    assert messages.data_seq(encoded) == 7
    assert parse_message(encoded) == Data(7, b"\x45ping", express=True)


def test_drop_reasons_keep_the_snapshot_keys() -> None:
    assert Drop.QUEUE_FULL.value == "queue_full"
    assert Drop("queue_full") is Drop.QUEUE_FULL
    assert {reason.value for reason in Drop} >= {
        "empty_packet",
        "closed",
        "queue_full",
        "no_path",
        "too_big",
        "unknown_path",
        "short_datagram",
        "wrong_path",
        "stale_session",
        "kcp_rejected",
        "linkdown_ignored",
    }
