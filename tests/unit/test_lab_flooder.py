"""The lab's flooder builds real IPv4/UDP packets from distinct spoofed sources."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ratbond.lab.flooder import build, main, packet, spoofed_sources

TARGET = (socket.inet_aton("198.18.0.100"), 12345)


def test_packets_are_ipv4_udp_to_the_target_from_the_spoofed_source() -> None:
    source = (socket.inet_aton("100.64.1.2"), 4321)
    data = packet(source, TARGET, b"hello")
    version_ihl, _, total, _, _, ttl, proto, _, src, dst = struct.unpack_from(
        "!BBHHHBBH4s4s", data)
    assert (version_ihl, total, ttl, proto) == (0x45, 20 + 8 + 5, 64, socket.IPPROTO_UDP)
    assert (src, dst) == (source[0], TARGET[0])
    assert struct.unpack_from("!HHHH", data, 20) == (4321, 12345, 8 + 5, 0)
    assert data[28:] == b"hello"


def test_sources_are_distinct_and_in_the_shared_address_space() -> None:
    sources = spoofed_sources(10_000, seed=1)
    assert len({address for address, _ in sources}) == 10_000
    net = ipaddress.IPv4Network("100.64.0.0/10")
    assert all(ipaddress.IPv4Address(address) in net for address, _ in sources)


def test_half_the_initiations_are_the_capture_and_half_forged_with_its_key_id() -> None:
    capture = bytes(range(150))
    inits, junk = build(TARGET, capture, spoofed_sources(4, seed=2), seed=2)
    assert [p[28:] == capture for p in inits] == [True, False, True, False]
    assert inits[1][28:56] == capture[:28] and len(inits[1]) == 28 + 150
    assert all(1 <= len(p) - 28 <= 200 for p in junk)


@pytest.mark.parametrize(("argv", "message"), [
    (["flood", "--target", "nohost", "--initiation", "00"], "is not IPv4:PORT"),
    (["flood", "--target", "1.2.3.4:5", "--initiation", "00", "--seconds", "0"], "--seconds 0"),
])
def test_bad_arguments_are_named(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
