"""Property: any sequence of netlink changes converges to what a fresh scan would say."""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from ratbond.linux.wan import (
    AddrInfo,
    LinkInfo,
    RouteInfo,
    WanAdded,
    WanAddressChanged,
    WanRemoved,
    WanTable,
)

V4, V6 = socket.AF_INET, socket.AF_INET6
INDEXES = st.integers(min_value=1, max_value=4)
ADDRESSES = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.1.1", "2001:db8::1", "fe80::1"])
TABLES = st.sampled_from([0, 100, 101, 254, 255])


def _addr(index: int, text: str) -> AddrInfo:
    ip = ipaddress.ip_address(text)
    return AddrInfo(index, ip, 24 if ip.version == 4 else 64, V4 if ip.version == 4 else V6)


def _route(table: int, oif: int, family: int, prefsrc: str | None) -> RouteInfo:
    return RouteInfo(table, 0, oif, "192.0.2.1" if family == V4 else "fe80::ff", prefsrc, family)


OPS = st.one_of(
    st.tuples(st.just("link"), INDEXES, st.sampled_from(["wan1", "wan2", "tun0"]),
              st.booleans(), st.booleans()),
    st.tuples(st.just("unlink"), INDEXES),
    st.tuples(st.just("addr+"), INDEXES, ADDRESSES),
    st.tuples(st.just("addr-"), INDEXES, ADDRESSES),
    st.tuples(st.just("route+"), TABLES, INDEXES, st.sampled_from([V4, V6]),
              st.one_of(st.none(), ADDRESSES)),
    st.tuples(st.just("route-"), TABLES, INDEXES, st.sampled_from([V4, V6])),
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=3.0)),
)


class Model:
    """The kernel state the operations describe, in arrival order."""

    def __init__(self) -> None:
        self.links: dict[int, LinkInfo] = {}
        self.addrs: dict[int, list[AddrInfo]] = {}
        self.routes: dict[tuple[int, int, int], RouteInfo] = {}

    def apply(self, op: tuple, table: WanTable, now: float) -> None:  # type: ignore[type-arg]
        kind = op[0]
        if kind == "link":
            info = LinkInfo(op[1], op[2], op[3], op[4])
            self.links[op[1]] = info
            table.link_changed(info, now)
        elif kind == "unlink":
            self.links.pop(op[1], None)
            self.addrs.pop(op[1], None)
            self.routes = {k: r for k, r in self.routes.items() if r.oif != op[1]}
            table.link_removed(op[1], now)
        elif kind == "addr+":
            a = _addr(op[1], op[2])
            lst = self.addrs.setdefault(op[1], [])
            if a not in lst:
                lst.append(a)
            table.addr_added(a, now)
        elif kind == "addr-":
            a = _addr(op[1], op[2])
            self.addrs[op[1]] = [x for x in self.addrs.get(op[1], []) if x != a]
            table.addr_removed(a, now)
        elif kind == "route+":
            r = _route(op[1], op[2], op[3], op[4])
            self.routes[(op[1], op[2], op[3])] = r
            table.route_added(r, now)
        elif kind == "route-":
            r = _route(op[1], op[2], op[3], None)
            self.routes.pop((op[1], op[2], op[3]), None)
            table.route_removed(r, now)

    def all_addrs(self) -> list[AddrInfo]:
        return [a for lst in self.addrs.values() for a in lst]


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_random_changes_converge_to_a_fresh_scan(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    table = WanTable(ignore_devices=["tun*"], debounce=0.3, max_holddown=5.0)
    table.replace_all([], [], [], now=0.0)
    model = Model()
    now = 0.0
    active: dict[tuple[int, int], object] = {}
    for op in ops:
        if op[0] == "wait":
            now += op[1]
            table.handle_timer(now)
        else:
            model.apply(op, table, now)
        # The event stream alone reproduces wans() at every step.
        while (event := table.next_event()) is not None:
            if isinstance(event, WanAdded):
                assert (event.wan.index, event.wan.family) not in active
                active[(event.wan.index, event.wan.family)] = event.wan
            elif isinstance(event, WanRemoved):
                assert active.pop((event.wan.index, event.wan.family)) == event.wan
            elif isinstance(event, WanAddressChanged):
                assert active[(event.old.index, event.old.family)] == event.old
                active[(event.new.index, event.new.family)] = event.new
        assert sorted(active.values(), key=repr) == sorted(table.wans(), key=repr)
        timer = table.get_timer()
        assert timer is None or timer >= now
    # Let every hold-down expire; then the table agrees with a scan of the final state.
    now += 6.0
    table.handle_timer(now)
    assert table.get_timer() is None
    fresh = WanTable(ignore_devices=["tun*"])
    fresh.replace_all(model.links.values(), model.all_addrs(), model.routes.values(), now=now)
    assert table.wans() == fresh.wans()
