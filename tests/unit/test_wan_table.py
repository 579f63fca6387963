"""WanTable rules on synthetic netlink snapshots (no root, fake clock)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ratbond.linux.wan import (
    AddrInfo,
    DownReason,
    LinkInfo,
    RouteInfo,
    WanAdded,
    WanAddressChanged,
    WanEvent,
    WanLink,
    WanRemoved,
    WanTable,
    WanTableError,
)

V4, V6 = socket.AF_INET, socket.AF_INET6


def link(index: int, name: str, *, up: bool = True, carrier: bool = True) -> LinkInfo:
    return LinkInfo(index=index, name=name, up=up, carrier=carrier)


def addr(index: int, text: str, prefixlen: int = 24) -> AddrInfo:
    ip = ipaddress.ip_address(text)
    return AddrInfo(index=index, address=ip, prefixlen=prefixlen,
                    family=V4 if ip.version == 4 else V6)


def default(table: int, oif: int, gateway: str = "192.0.2.1", prefsrc: str | None = None,
            family: int = V4) -> RouteInfo:
    return RouteInfo(table=table, dst_len=0, oif=oif, gateway=gateway, prefsrc=prefsrc,
                     family=family)


def drain(table: WanTable) -> list[WanEvent]:
    out = []
    while (event := table.next_event()) is not None:
        out.append(event)
    return out


def two_wans() -> tuple[list[LinkInfo], list[AddrInfo], list[RouteInfo]]:
    links = [link(1, "lo"), link(2, "wan1"), link(3, "wan2"), link(4, "lan0")]
    addrs = [addr(2, "10.1.0.2"), addr(3, "10.2.0.2"), addr(4, "192.168.99.1")]
    routes = [default(101, 2, "10.1.0.1"), default(102, 3, "10.2.0.1"),
              RouteInfo(101, 24, 2, None, "10.1.0.2", V4)]
    return links, addrs, routes


def names(table: WanTable) -> list[str]:
    return [w.name for w in table.wans()]


def test_start_up_scan_adds_wans_at_once_in_own_tables_only() -> None:
    links, addrs, routes = two_wans()
    routes += [default(254, 4, "192.168.99.254"), default(255, 4), default(0, 4)]
    table = WanTable()
    table.replace_all(links, addrs, routes, now=0.0)
    assert names(table) == ["wan1", "wan2"]
    assert [type(e) for e in drain(table)] == [WanAdded, WanAdded]
    assert table.get_timer() is None


def test_non_default_routes_and_routes_without_oif_are_ignored() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [addr(2, "10.1.0.2")],
                      [RouteInfo(101, 24, 2, None, None, V4),
                       RouteInfo(101, 0, None, "10.1.0.1", None, V4)], now=0.0)
    assert table.wans() == []


def test_prefsrc_wins_over_primary_address() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [addr(2, "10.1.0.2"), addr(2, "10.1.0.9")],
                      [default(101, 2, prefsrc="10.1.0.9")], now=0.0)
    assert table.wans()[0].address == ipaddress.ip_address("10.1.0.9")


def test_unassigned_prefsrc_falls_back_to_primary_address() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [addr(2, "10.1.0.2"), addr(2, "10.1.0.9")],
                      [default(101, 2, prefsrc="10.99.0.1")], now=0.0)
    assert table.wans()[0].address == ipaddress.ip_address("10.1.0.2")


def test_wan_without_any_address_is_not_a_wan() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [], [default(101, 2)], now=0.0)
    assert table.wans() == []


@pytest.mark.parametrize(("include", "exclude", "expected"), [
    ((), (), ["wan1", "wwan0", "wwan1"]),
    (("wwan*",), (), ["wwan0", "wwan1"]),
    ((), ("wwan*",), ["wan1"]),
    (("wwan*", "wan1"), ("wwan1",), ["wan1", "wwan0"]),
])
def test_include_and_exclude_globs(include: tuple[str, ...], exclude: tuple[str, ...],
                                   expected: list[str]) -> None:
    links = [link(2, "wan1"), link(3, "wwan0"), link(4, "wwan1")]
    addrs = [addr(2, "10.1.0.2"), addr(3, "10.2.0.2"), addr(4, "10.3.0.2")]
    routes = [default(101, 2), default(102, 3), default(103, 4)]
    table = WanTable(include=include, exclude=exclude)
    table.replace_all(links, addrs, routes, now=0.0)
    assert names(table) == expected


def test_own_tun_is_ignored_even_with_a_default_route_in_its_own_table() -> None:
    table = WanTable(ignore_devices=["tun660"])
    table.replace_all([link(2, "wan1"), link(9, "tun660")],
                      [addr(2, "10.1.0.2"), addr(9, "10.10.10.1", 30)],
                      [default(101, 2), default(200, 9, "10.10.10.2")], now=0.0)
    assert names(table) == ["wan1"]


def started() -> WanTable:
    table = WanTable(debounce=0.3)
    table.replace_all(*two_wans(), now=0.0)
    drain(table)
    return table


@pytest.mark.parametrize(("change", "reason"), [
    (lambda t: t.link_changed(link(2, "wan1", up=False), 1.0), DownReason.LINK_DOWN),
    (lambda t: t.link_changed(link(2, "wan1", carrier=False), 1.0), DownReason.CARRIER_LOST),
    (lambda t: t.link_removed(2, 1.0), DownReason.LINK_REMOVED),
    (lambda t: t.route_removed(default(101, 2, "10.1.0.1"), 1.0), DownReason.ROUTE_REMOVED),
    (lambda t: t.addr_removed(addr(2, "10.1.0.2"), 1.0), DownReason.ADDRESS_REMOVED),
])
def test_each_down_trigger_removes_at_once(change, reason: DownReason) -> None:
    table = started()
    change(table)
    events = drain(table)
    assert len(events) == 1
    assert isinstance(events[0], WanRemoved)
    assert events[0].wan.name == "wan1"
    assert events[0].reason is reason
    assert names(table) == ["wan2"]


def test_up_is_debounced() -> None:
    table = started()
    table.link_changed(link(2, "wan1", up=False), 1.0)
    drain(table)
    table.link_changed(link(2, "wan1"), 2.0)
    assert drain(table) == []
    # First flap: hold-down is the debounce alone (a link back after one cut rejoins fast).
    assert table.get_timer() == pytest.approx(2.3)
    table.handle_timer(2.29)
    assert drain(table) == []
    table.handle_timer(2.3)
    events = drain(table)
    assert [type(e) for e in events] == [WanAdded]
    assert names(table) == ["wan1", "wan2"]
    assert table.get_timer() is None


def test_new_wan_at_runtime_waits_for_debounce() -> None:
    table = started()
    table.link_changed(link(5, "wan3"), 1.0)
    table.addr_added(addr(5, "10.3.0.2"), 1.0)
    table.route_added(default(103, 5, "10.3.0.1"), 1.0)
    assert drain(table) == []
    assert table.get_timer() == pytest.approx(1.3)
    table.handle_timer(1.3)
    assert [e.wan.name for e in drain(table) if isinstance(e, WanAdded)] == ["wan3"]


def test_flapping_link_backs_off_and_produces_few_events() -> None:
    table = started()
    now = 1.0
    for _ in range(200):  # 10 s of a link bouncing every 25 ms
        table.link_changed(link(2, "wan1", up=False), now)
        now += 0.025
        table.link_changed(link(2, "wan1"), now)
        now += 0.025
        if (due := table.get_timer()) is not None and due <= now:
            table.handle_timer(now)
    events = drain(table)
    assert [type(e) for e in events] == [WanRemoved]
    # Once stable, it comes back after the capped hold-down, exactly once.
    due = table.get_timer()
    assert due is not None
    assert due - now <= 10.0
    table.handle_timer(due)
    assert [type(e) for e in drain(table)] == [WanAdded]


def test_flap_penalty_decays_after_a_quiet_period() -> None:
    table = started()
    for t in (1.0, 2.0, 3.0):
        table.link_changed(link(2, "wan1", up=False), t)
        table.link_changed(link(2, "wan1"), t + 0.01)
    table.handle_timer(20.0)
    drain(table)
    table.link_changed(link(2, "wan1", up=False), 100.0)
    table.link_changed(link(2, "wan1"), 100.0)
    assert table.get_timer() == pytest.approx(100.3)  # one flap since the decay: debounce


def test_address_change_keeps_the_wan() -> None:
    table = started()
    table.addr_added(addr(2, "10.1.0.7"), 1.0)
    table.route_added(default(101, 2, "10.1.0.1", prefsrc="10.1.0.7"), 1.0)
    table.addr_removed(addr(2, "10.1.0.2"), 1.0)
    events = drain(table)
    assert len(events) == 1
    assert isinstance(events[0], WanAddressChanged)
    assert events[0].old.address == ipaddress.ip_address("10.1.0.2")
    assert events[0].new.address == ipaddress.ip_address("10.1.0.7")
    assert names(table) == ["wan1", "wan2"]


def test_primary_address_removed_with_secondary_left_changes_address() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [addr(2, "10.1.0.2"), addr(2, "10.1.0.3")],
                      [default(101, 2)], now=0.0)
    drain(table)
    table.addr_removed(addr(2, "10.1.0.2"), 1.0)
    events = drain(table)
    assert [type(e) for e in events] == [WanAddressChanged]


def test_ipv6_wan_needs_a_global_address_and_a_non_main_default() -> None:
    links = [link(2, "wan1")]
    addrs = [addr(2, "fe80::1", 64), addr(2, "2001:db8:1::2", 64)]
    table = WanTable()
    table.replace_all(links, addrs, [default(254, 2, "fe80::ff", family=V6)], now=0.0)
    assert table.wans() == []
    table.route_added(default(101, 2, "fe80::ff", family=V6), 1.0)
    table.handle_timer(1.3)
    assert table.wans() == [WanLink("wan1", 2, ipaddress.ip_address("2001:db8:1::2"), 101, V6)]


def test_ipv6_link_local_only_is_not_a_wan() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [addr(2, "fe80::1", 64)],
                      [default(101, 2, "fe80::ff", family=V6)], now=0.0)
    assert table.wans() == []


def test_v4_and_v6_on_one_interface_are_two_wans() -> None:
    table = WanTable()
    table.replace_all([link(2, "wan1")], [addr(2, "10.1.0.2"), addr(2, "2001:db8::2", 64)],
                      [default(101, 2), default(101, 2, "fe80::1", family=V6)], now=0.0)
    assert sorted(w.family for w in table.wans()) == [V4, V6]


def test_replace_all_reports_only_differences() -> None:
    table = started()
    links, addrs, routes = two_wans()
    table.replace_all(links, addrs, routes, now=5.0)
    assert drain(table) == []
    table.replace_all(links, addrs, routes[1:], now=6.0)  # wan1's default route gone
    events = drain(table)
    assert events == [WanRemoved(WanLink("wan1", 2, ipaddress.ip_address("10.1.0.2"), 101, V4),
                                 DownReason.ROUTE_REMOVED)]
    table.replace_all(links, addrs, routes, now=7.0)
    assert drain(table) == []  # later scans are debounced like events
    assert table.get_timer() is not None


def test_interface_renamed_is_removed_then_added() -> None:
    table = started()
    table.link_changed(link(2, "wan9"), 1.0)
    events = drain(table)
    assert [type(e) for e in events] == [WanRemoved]
    assert isinstance(events[0], WanRemoved)
    assert events[0].reason is DownReason.FILTERED
    table.handle_timer(1.3)
    assert [e.wan.name for e in drain(table) if isinstance(e, WanAdded)] == ["wan9"]


def test_timer_never_busy_loops() -> None:
    table = started()
    table.link_changed(link(2, "wan1", up=False), 1.0)
    table.link_changed(link(2, "wan1"), 1.0)
    due = table.get_timer()
    assert due is not None
    table.handle_timer(due - 0.1)  # an early wake-up keeps the same deadline
    assert table.get_timer() == due


def test_bad_parameters_raise() -> None:
    with pytest.raises(WanTableError):
        WanTable(debounce=-1)
    with pytest.raises(WanTableError):
        WanTable(debounce=5, max_holddown=1)
