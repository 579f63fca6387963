"""Fuzz the TUN packet parsers: flow keys and packet classes (IPv4, IPv6, junk), and the
server's source-address check of a client's packets (``clients.AllowedIps``)."""

from __future__ import annotations

from fuzz._common import fuzz, instrumented

with instrumented(__name__):
    import ipaddress

    from ratbond.bond import flow
    from ratbond.clients import AllowedIps

#: A client's own addresses, as the server's isolation check sees them.
_OWNED = AllowedIps([ipaddress.ip_network("10.10.10.0/30"),
                     ipaddress.ip_network("fd00:7262:6f6e:6400::/64"),
                     ipaddress.ip_network("192.168.1.0/24")])


def test_one_input(data: bytes) -> None:
    key = flow.flow_key(data)
    assert isinstance(key, bytes) and key, key
    assert flow.flow_key(data) == key  # a pure function: the same packet, the same path
    klass = flow.packet_class(data)
    assert klass in (flow.BULK, flow.SMALL, flow.REALTIME), klass
    assert _OWNED.permits(data) in (True, False)
    reply = _reply(data)
    if reply is not None:  # a packet and its answer share a path
        assert flow.flow_key(reply) == key, (data, reply)


def _reply(packet: bytes) -> bytes | None:
    """``packet`` with source and destination (addresses and ports) swapped, for a
    plain IPv4 or IPv6 TCP/UDP header; None for anything else."""
    if len(packet) >= 24 and packet[0] == 0x45 and packet[9] in (6, 17):
        return (packet[:12] + packet[16:20] + packet[12:16] + packet[22:24] + packet[20:22]
                + packet[24:])
    if len(packet) >= 44 and packet[0] >> 4 == 6 and packet[6] in (6, 17):
        return (packet[:8] + packet[24:40] + packet[8:24] + packet[42:44] + packet[40:42]
                + packet[44:])
    return None


if __name__ == "__main__":
    fuzz(test_one_input)
