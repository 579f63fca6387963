"""Netlink messages (encoded and parsed by pyroute2, no kernel) -> WanTable snapshots."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ratbond.linux.netlink import (
    IFA_F_TENTATIVE,
    IFF_LOWER_UP,
    IFF_UP,
    WanMonitor,
    WanMonitorError,
    addr_from_msg,
    link_from_msg,
    routes_from_msg,
)
from ratbond.linux.wan import AddrInfo, LinkInfo, RouteInfo, WanTable


def roundtrip(msg: Any, msg_type: int) -> Any:
    """What the kernel's bytes for ``msg`` decode to."""
    msg["header"]["type"] = msg_type
    msg.encode()
    (parsed,) = list(MarshalRtnl().parse(msg.data))
    return parsed


def route(attrs: list[tuple[str, Any]], *, table: int = 101, kind: int = 1,
          family: int = socket.AF_INET, dst_len: int = 0) -> Any:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["type"] = family, dst_len, table, kind
    msg["attrs"] = attrs
    return roundtrip(msg, RTM_NEWROUTE)


def test_link_flags_map_to_up_and_carrier() -> None:
    for flags, up, carrier in ((IFF_UP | IFF_LOWER_UP, True, True), (IFF_UP, True, False),
                               (0, False, False)):
        msg = ifinfmsg()
        msg["index"], msg["flags"] = 7, flags
        msg["attrs"] = [("IFLA_IFNAME", "wan1")]
        assert link_from_msg(roundtrip(msg, RTM_NEWLINK)) == LinkInfo(7, "wan1", up, carrier)


def test_ipv4_address_uses_local() -> None:
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, 32, 3
    # Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL ours.
    msg["attrs"] = [("IFA_ADDRESS", "10.0.0.9"), ("IFA_LOCAL", "10.0.0.1")]
    assert addr_from_msg(roundtrip(msg, RTM_NEWADDR)) == (
        AddrInfo(3, ipaddress.ip_address("10.0.0.1"), 32, socket.AF_INET), True)


def test_tentative_ipv6_address_is_not_usable_yet() -> None:
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET6, 64, 3
    msg["attrs"] = [("IFA_ADDRESS", "2001:db8::2"), ("IFA_FLAGS", IFA_F_TENTATIVE)]
    found = addr_from_msg(roundtrip(msg, RTM_NEWADDR))
    assert found is not None
    assert found[1] is False


def test_route_table_above_255_comes_from_rta_table() -> None:
    parsed = route([("RTA_TABLE", 1000), ("RTA_OIF", 4), ("RTA_GATEWAY", "10.0.0.1")],
                   table=252)
    assert routes_from_msg(parsed) == [RouteInfo(1000, 0, 4, "10.0.0.1", None, socket.AF_INET)]


def test_multipath_route_gives_one_route_per_next_hop() -> None:
    hops = [{"oif": 3, "attrs": [("RTA_GATEWAY", "10.0.0.1")]},
            {"oif": 4, "attrs": [("RTA_GATEWAY", "10.0.1.1")]}]
    parsed = route([("RTA_TABLE", 101), ("RTA_MULTIPATH", hops), ("RTA_PREFSRC", "10.0.0.2")])
    assert [(r.oif, r.gateway, r.prefsrc) for r in routes_from_msg(parsed)] == [
        (3, "10.0.0.1", "10.0.0.2"), (4, "10.0.1.1", "10.0.0.2")]


def test_blackhole_and_unreachable_defaults_are_not_routes_to_use() -> None:
    for kind in (6, 7):  # RTN_BLACKHOLE, RTN_UNREACHABLE
        assert routes_from_msg(route([("RTA_TABLE", 101)], kind=kind)) == []


def test_ipv6_default_route() -> None:
    parsed = route([("RTA_TABLE", 101), ("RTA_OIF", 2), ("RTA_GATEWAY", "fe80::1")],
                   family=socket.AF_INET6)
    assert routes_from_msg(parsed) == [RouteInfo(101, 0, 2, "fe80::1", None, socket.AF_INET6)]


def test_monitor_misuse_raises_a_typed_error() -> None:
    mon = WanMonitor(WanTable())
    with pytest.raises(WanMonitorError):
        mon.fileno()
    with pytest.raises(WanMonitorError):
        mon.drain(0.0)
    mon.close()  # closing a monitor that never opened is harmless
