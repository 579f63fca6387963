"""Flow keys: 5-tuples for TCP/UDP over IPv4 and IPv6, address pairs otherwise."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from ratbond.bond.flow import BULK, REALTIME, SMALL, UNPARSABLE_KEY, flow_key, packet_class

V4_A = bytes([10, 0, 0, 1])
V4_B = bytes([10, 0, 0, 2])
V6_A = bytes.fromhex("20010db8000000000000000000000001")
V6_B = bytes.fromhex("20010db8000000000000000000000002")


def ipv4(
    proto: int, payload: bytes, *, ihl: int = 5, frag: int = 0, src: bytes = V4_A, dst: bytes = V4_B
) -> bytes:
    options = bytes((ihl - 5) * 4)
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        20 + len(options) + len(payload),
        1,
        frag,
        64,
        proto,
        0,
        src,
        dst,
    )
    return header + options + payload


def ipv6(next_header: int, payload: bytes, src: bytes = V6_A, dst: bytes = V6_B) -> bytes:
    header = struct.pack(">IHBB16s16s", 0x60000000, len(payload), next_header, 64, src, dst)
    return header + payload


def ports(sport: int, dport: int) -> bytes:
    return struct.pack(">HH", sport, dport) + bytes(16)


def test_ipv4_tcp_and_udp_are_keyed_by_five_tuple() -> None:
    a = flow_key(ipv4(6, ports(1000, 80)))
    assert a == flow_key(ipv4(6, ports(1000, 80) + b"more payload"))
    assert a != flow_key(ipv4(6, ports(1001, 80)))
    assert a != flow_key(ipv4(6, ports(1000, 81)))
    assert a != flow_key(ipv4(17, ports(1000, 80)))
    assert a != flow_key(ipv4(6, ports(1000, 80), src=V4_B))


def test_a_packet_and_its_reply_share_a_key() -> None:
    """Data one way and ACKs the other way must ride one path, or a flow depends on two."""
    assert flow_key(ipv4(6, ports(1000, 80))) == flow_key(
        ipv4(6, ports(80, 1000), src=V4_B, dst=V4_A)
    )
    assert flow_key(ipv6(17, ports(5000, 53))) == flow_key(
        ipv6(17, ports(53, 5000), src=V6_B, dst=V6_A)
    )
    assert flow_key(ipv4(1, bytes(8))) == flow_key(ipv4(1, bytes(8), src=V4_B, dst=V4_A))
    assert flow_key(ipv6(58, bytes(8))) == flow_key(ipv6(58, bytes(8), src=V6_B, dst=V6_A))
    # ...while the two directions of *different* port pairs stay apart.
    assert flow_key(ipv4(6, ports(1000, 80))) != flow_key(
        ipv4(6, ports(1000, 80), src=V4_B, dst=V4_A)
    )


def test_ipv4_options_are_skipped_to_find_the_ports() -> None:
    assert flow_key(ipv4(17, ports(53, 5353), ihl=7)) == flow_key(ipv4(17, ports(53, 5353)))


def test_ipv4_icmp_is_keyed_by_address_pair() -> None:
    assert flow_key(ipv4(1, b"\x08\x00" + bytes(30))) == flow_key(ipv4(1, b"\x00\x00" + bytes(6)))
    assert flow_key(ipv4(1, bytes(8))) != flow_key(ipv4(6, ports(1, 2)))


def test_ipv4_fragments_all_share_the_address_pair_key() -> None:
    first = flow_key(ipv4(17, ports(1000, 2000), frag=0x2000))  # MF set, offset 0
    middle = flow_key(ipv4(17, bytes(24), frag=0x2000 | 185))
    last = flow_key(ipv4(17, bytes(24), frag=185))
    assert first == middle == last
    assert first == flow_key(ipv4(1, bytes(8)))
    # DF alone is not fragmentation.
    unfragmented = flow_key(ipv4(17, ports(1000, 2000)))
    assert flow_key(ipv4(17, ports(1000, 2000), frag=0x4000)) == unfragmented


def test_ipv4_truncated_transport_header_falls_back_to_address_pair() -> None:
    assert flow_key(ipv4(6, b"\x03")) == flow_key(ipv4(1, b""))


def test_ipv4_bad_ihl_falls_back_to_address_pair() -> None:
    packet = bytearray(ipv4(6, ports(1, 2)))
    packet[0] = 0x42  # IHL 2 (8 bytes) is impossible
    assert flow_key(bytes(packet)) == flow_key(ipv4(1, b""))


def test_ipv6_tcp_udp_five_tuple() -> None:
    a = flow_key(ipv6(6, ports(1000, 443)))
    assert a == flow_key(ipv6(6, ports(1000, 443) + b"x"))
    assert a != flow_key(ipv6(6, ports(1002, 443)))
    assert a != flow_key(ipv6(17, ports(1000, 443)))
    assert a != flow_key(ipv4(6, ports(1000, 443)))


def test_ipv6_extension_headers_are_walked_to_the_ports() -> None:
    hop_by_hop = bytes([60, 0]) + bytes(6)  # next: destination options, 8 bytes
    dest_opts = bytes([43, 1]) + bytes(14)  # next: routing, 16 bytes
    routing = bytes([51, 0]) + bytes(6)  # next: AH, 8 bytes
    auth = bytes([17, 1]) + bytes(10)  # next: UDP, (1 + 2) * 4 = 12 bytes
    packet = ipv6(0, hop_by_hop + dest_opts + routing + auth + ports(5000, 53))
    assert flow_key(packet) == flow_key(ipv6(17, ports(5000, 53)))


def test_ipv6_fragments_share_the_address_pair_key() -> None:
    first = flow_key(ipv6(44, bytes([6, 0, 0, 1]) + bytes(4) + ports(1, 2)))
    later = flow_key(ipv6(44, bytes([6, 0, 0x05, 0x09]) + bytes(4) + bytes(20)))
    assert first == later == flow_key(ipv6(58, bytes(8)))


def test_ipv6_icmp_esp_and_truncated_extensions_use_address_pair() -> None:
    pair = flow_key(ipv6(58, bytes(8)))
    assert flow_key(ipv6(50, bytes(16))) == pair
    assert flow_key(ipv6(0, bytes([6, 0]))) == pair  # extension header cut short
    assert flow_key(ipv6(0, bytes([6, 200]) + bytes(6) + ports(1, 2))) == pair  # overruns
    assert flow_key(ipv6(6, b"\x01")) == pair
    assert pair != flow_key(ipv6(58, bytes(8), src=V6_B))


def test_ipv6_extension_chain_is_bounded() -> None:
    chain = b"".join(bytes([0, 0]) + bytes(6) for _ in range(20))
    assert flow_key(ipv6(0, chain + ports(1, 2))) == flow_key(ipv6(58, b""))


def test_unparsable_packets_get_the_fixed_key() -> None:
    assert flow_key(b"") == UNPARSABLE_KEY
    assert flow_key(b"\x45\x00") == UNPARSABLE_KEY  # IPv4 shorter than its header
    assert flow_key(b"\x60" + bytes(20)) == UNPARSABLE_KEY  # IPv6 shorter than its header
    assert flow_key(b"\x10" + bytes(60)) == UNPARSABLE_KEY  # version 1


@given(st.binary(max_size=200))
def test_flow_key_never_raises_on_garbage(data: bytes) -> None:
    assert isinstance(flow_key(data), bytes)


@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60]), st.binary(max_size=120))
def test_flow_key_never_raises_on_ip_like_garbage(first: int, rest: bytes) -> None:
    key = flow_key(bytes([first]) + rest)
    assert key


def with_dscp(packet: bytes, dscp: int) -> bytes:
    """``packet`` (IPv4 or IPv6) with its DSCP set."""
    data = bytearray(packet)
    if data[0] >> 4 == 4:
        data[1] = dscp << 2
    else:
        data[0] = 0x60 | dscp >> 2
        data[1] = (dscp & 0x03) << 6
    return bytes(data)


def test_packet_classes_bulk_small_and_realtime() -> None:
    big = bytes(300)
    assert packet_class(ipv4(6, ports(40000, 443) + big)) == BULK
    assert packet_class(ipv4(17, ports(40000, 5201) + big)) == BULK
    assert packet_class(ipv6(6, ports(40000, 443) + big)) == BULK
    # Under SMALL_PACKET bytes (every pure ACK), ICMP of any size, DNS of any size.
    assert packet_class(ipv4(6, ports(40000, 443))) == SMALL
    assert packet_class(ipv4(1, big)) == SMALL
    assert packet_class(ipv6(58, big)) == SMALL
    assert packet_class(ipv4(17, ports(53, 40000) + big)) == SMALL
    assert packet_class(ipv4(17, ports(40000, 53) + big, ihl=6)) == SMALL
    assert packet_class(ipv6(17, ports(40000, 53) + big)) == SMALL
    # DSCP EF (46) and CS5 (40) are real time whatever their size; AF41 (34) is not.
    for make in (ipv4, ipv6):
        assert packet_class(with_dscp(make(17, ports(1, 2) + big), 46)) == REALTIME
        assert packet_class(with_dscp(make(6, ports(1, 2) + big), 40)) == REALTIME
        assert packet_class(with_dscp(make(6, ports(1, 2) + big), 34)) == BULK
    # A fragment's ports are not read (its payload is not a UDP header).
    assert packet_class(ipv4(17, ports(40000, 53) + big, frag=0x2000)) == BULK
    assert packet_class(b"") == SMALL
    assert packet_class(b"\x99" + big) == BULK


@given(st.binary(max_size=300))
def test_packet_class_never_raises(packet: bytes) -> None:
    assert packet_class(packet) in (BULK, SMALL, REALTIME)
