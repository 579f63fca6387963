"""The policy-routing planner on synthetic kernel snapshots (no root, no netlink)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ratbond.linux.policy import (
    RTPROT_RATBOND,
    Change,
    Plan,
    Route,
    Rule,
    describe,
    plan_apply,
    plan_remove,
)
from ratbond.linux.wan import AddrInfo, LinkInfo

V4, V6 = socket.AF_INET, socket.AF_INET6
NET = ipaddress.ip_network
LINKS = [LinkInfo(1, "lo", True, True), LinkInfo(2, "eth1", True, True),
         LinkInfo(3, "eth2", True, True)]


def addr(index: int, text: str, prefixlen: int) -> AddrInfo:
    ip = ipaddress.ip_address(text)
    return AddrInfo(index=index, address=ip, prefixlen=prefixlen,
                    family=V4 if ip.version == 4 else V6)


ADDRS = [addr(1, "127.0.0.1", 8), addr(2, "192.168.0.193", 24), addr(3, "192.168.88.251", 24)]
MAIN = [
    Route(254, NET("0.0.0.0/0"), 2, "192.168.0.1", proto=16, metric=100),
    Route(254, NET("0.0.0.0/0"), 3, "192.168.88.1", proto=16, metric=200),
    Route(254, NET("192.168.0.0/24"), 2, None, "192.168.0.193", proto=2),
    Route(254, NET("192.168.88.0/24"), 3, None, "192.168.88.251", proto=2),
]
SYSTEM_RULES = [Rule(V4, 0, 255), Rule(V4, 32766, 254), Rule(V4, 32767, 253)]


def kernel_after(changes: list[Change], routes: list[Route],
                 rules: list[Rule]) -> tuple[list[Route], list[Rule]]:
    """What the kernel holds after the changes (a tiny model of add/del)."""
    routes, rules = list(routes), list(rules)
    for change in changes:
        items: list[Route] | list[Rule] = routes if isinstance(change.item, Route) else rules
        if change.action == "add":
            assert change.item not in items
            items.append(change.item)  # type: ignore[arg-type]
        else:
            items.remove(change.item)  # type: ignore[arg-type]
    return routes, rules


def test_fresh_router_gets_one_table_and_rule_per_wan() -> None:
    plan = plan_apply(["eth1", "eth2"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    assert plan.problems == []
    added = [c.item for c in plan.changes if c.action == "add"]
    assert len(plan.changes) == len(added) == 6
    assert Route(100, NET("192.168.0.0/24"), 2, None, "192.168.0.193") in added
    assert Route(100, NET("0.0.0.0/0"), 2, "192.168.0.1", "192.168.0.193") in added
    assert Route(101, NET("0.0.0.0/0"), 3, "192.168.88.1", "192.168.88.251") in added
    assert Rule(V4, 10000, 100, NET("192.168.0.193/32")) in added
    assert Rule(V4, 10000, 101, NET("192.168.88.251/32")) in added
    assert all(r.proto == RTPROT_RATBOND for r in added if isinstance(r, Route))
    # Routes first: a rule never points at an empty table.
    kinds = [isinstance(c.item, Rule) for c in plan.changes]
    assert kinds == sorted(kinds)
    assert plan.wans == {"eth1": (100, ["192.168.0.193"]), "eth2": (101, ["192.168.88.251"])}


def test_table_base_and_pref_are_used() -> None:
    plan = plan_apply(["eth2"], LINKS, ADDRS, MAIN, SYSTEM_RULES, table_base=200, pref=900)
    rules = [c.item for c in plan.changes if isinstance(c.item, Rule)]
    assert rules == [Rule(V4, 900, 200, NET("192.168.88.251/32"))]
    assert {c.item.table for c in plan.changes} == {200}


def test_apply_twice_changes_nothing_and_remove_restores_exactly() -> None:
    plan = plan_apply(["eth1", "eth2"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    routes, rules = kernel_after(plan.changes, MAIN, SYSTEM_RULES)
    assert plan_apply(["eth1", "eth2"], LINKS, ADDRS, routes, rules).changes == []
    removal = plan_remove(routes, rules)
    assert {c.action for c in removal.changes} == {"del"}
    routes, rules = kernel_after(removal.changes, routes, rules)
    assert routes == MAIN
    assert rules == SYSTEM_RULES


def test_kernel_filled_metric_is_still_ours() -> None:
    plan = plan_apply(["eth1"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    routes, rules = kernel_after(plan.changes, MAIN, SYSTEM_RULES)
    with_metric = [Route(r.table, r.dst, r.oif, r.gateway, r.prefsrc, r.proto, 1024)
                   if r.table == 100 else r for r in routes]
    assert plan_apply(["eth1"], LINKS, ADDRS, with_metric, rules).changes == []


def test_new_dhcp_address_replaces_the_old_rule_and_routes() -> None:
    plan = plan_apply(["eth1"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    routes, rules = kernel_after(plan.changes, MAIN, SYSTEM_RULES)
    moved = [addr(2, "10.0.5.7", 16), *ADDRS[2:]]
    main = [Route(254, NET("0.0.0.0/0"), 2, "10.0.0.1", proto=16)]
    update = plan_apply(["eth1"], LINKS, moved, main + routes[len(MAIN):], rules)
    assert Change("del", Rule(V4, 10000, 100, NET("192.168.0.193/32"))) in update.changes
    assert Change("add", Rule(V4, 10000, 100, NET("10.0.5.7/32"))) in update.changes
    assert Change("add", Route(100, NET("0.0.0.0/0"), 2, "10.0.0.1", "10.0.5.7")) \
        in update.changes
    assert [c.action for c in update.changes].count("del") == 3  # old rule + 2 old routes


def test_remove_touches_only_what_ratbond_added() -> None:
    user = [Route(100, NET("10.9.0.0/16"), 2, None, proto=4),   # user's, in our range
            Route(7, NET("0.0.0.0/0"), 2, "192.168.0.1", proto=RTPROT_RATBOND)]  # not our range
    user_rules = [Rule(V4, 10000, 7, NET("192.168.0.193/32")),   # our pref, other table
                  Rule(V4, 500, 100, NET("192.168.0.193/32"))]   # our table, other pref
    ours_route = Route(101, NET("0.0.0.0/0"), 3, "192.168.88.1", "192.168.88.251")
    ours_rule = Rule(V4, 10000, 101, NET("192.168.88.251/32"))
    plan = plan_remove(MAIN + user + [ours_route], SYSTEM_RULES + user_rules + [ours_rule])
    assert plan.changes == [Change("del", ours_rule), Change("del", ours_route)]


def test_a_table_holding_the_users_routes_is_refused() -> None:
    foreign = Route(100, NET("10.9.0.0/16"), 2, None, proto=4)
    plan = plan_apply(["eth1"], LINKS, ADDRS, [*MAIN, foreign], SYSTEM_RULES)
    assert plan.changes == []
    assert "table 100" in plan.problems[0]
    assert "--table-base" in plan.problems[0]


def test_missing_interface_gateway_or_address_is_a_problem_and_changes_nothing() -> None:
    plan = plan_apply(["eth1", "wwan0"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    assert plan.changes == []
    assert plan.problems == ["wwan0: no such interface (see: ip -br link)"]
    no_gw = plan_apply(["eth2"], LINKS, ADDRS, MAIN[:1], SYSTEM_RULES)
    assert no_gw.changes == [] and "no IPv4 default route" in no_gw.problems[0]
    no_addr = plan_apply(["eth1"], LINKS, ADDRS[2:], MAIN, SYSTEM_RULES)
    assert no_addr.changes == [] and "no IPv4 address" in no_addr.problems[0]


def test_bad_ranges_are_refused() -> None:
    assert plan_apply(["eth1"], LINKS, ADDRS, MAIN, SYSTEM_RULES, table_base=240).problems
    assert plan_apply(["eth1"], LINKS, ADDRS, MAIN, SYSTEM_RULES, pref=32766).problems
    assert plan_remove(MAIN, SYSTEM_RULES, table_base=0).problems


def test_gateway_outside_the_subnet_gets_an_on_link_route() -> None:
    slash32 = [addr(2, "203.0.113.9", 32)]
    main = [Route(254, NET("0.0.0.0/0"), 2, "172.31.1.1", proto=16)]
    plan = plan_apply(["eth1"], LINKS, slash32, main, SYSTEM_RULES)
    added = [c.item for c in plan.changes]
    assert Route(100, NET("172.31.1.1/32"), 2, None, "203.0.113.9") in added
    assert not any(isinstance(r, Route) and r.dst == NET("203.0.113.9/32") for r in added)


def test_ipv6_only_with_a_global_address_and_a_default_route() -> None:
    link_local = [*ADDRS, addr(2, "fe80::1", 64)]
    plan = plan_apply(["eth1"], LINKS, link_local, MAIN, SYSTEM_RULES)
    assert not any(c.item.family == V6 for c in plan.changes)
    v6 = [*link_local, addr(2, "2001:db8:1::5", 64)]
    main6 = [*MAIN, Route(254, NET("::/0"), 2, "fe80::1", proto=9, metric=1024)]
    plan = plan_apply(["eth1"], LINKS, v6, main6, SYSTEM_RULES)
    added = [c.item for c in plan.changes]
    assert Rule(V6, 10000, 100, NET("2001:db8:1::5/128")) in added
    assert Route(100, NET("::/0"), 2, "fe80::1", "2001:db8:1::5") in added
    assert Route(100, NET("2001:db8:1::/64"), 2, None, "2001:db8:1::5") in added
    assert plan.wans["eth1"] == (100, ["192.168.0.193", "2001:db8:1::5"])


def test_show_names_what_is_missing_with_the_fix() -> None:
    lines = describe(LINKS, ADDRS, MAIN, SYSTEM_RULES)
    text = "\n".join(lines)
    assert "eth1 (up):" in text and "via 192.168.0.1" in text
    assert text.count("MISSING") == 2
    assert lines[-1] == ("fix: ratbond policy-routing apply --wan eth1 --wan eth2 (or run the "
                         "client with --manage-policy-routing)")
    plan = plan_apply(["eth1", "eth2"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    routes, rules = kernel_after(plan.changes, MAIN, SYSTEM_RULES)
    after = "\n".join(describe(LINKS, ADDRS, routes, rules))
    assert "MISSING" not in after
    assert "rule pref 10000 from 192.168.0.193 lookup 100" in after
    # A table without its rule: the exact command that adds it.
    no_rule = "\n".join(describe(LINKS, ADDRS, routes, rules[:-1]))
    assert "ip rule add pref 10000 from 192.168.88.251 lookup 101" in no_rule


def test_changes_print_as_ip_commands() -> None:
    plan = plan_apply(["eth1"], LINKS, ADDRS, MAIN, SYSTEM_RULES)
    names = {2: "eth1"}
    commands = [c.command(names) for c in plan.changes]
    assert commands == [
        "ip route add 192.168.0.0/24 dev eth1 scope link src 192.168.0.193 table 100 proto 98",
        "ip route add default via 192.168.0.1 dev eth1 src 192.168.0.193 table 100 proto 98",
        "ip rule add pref 10000 from 192.168.0.193/32 lookup 100",
    ]


class CapturingRtnl:
    """Records the requests the applier makes, as the kernel would receive them."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def request(self, msg: object, msg_type: int, _flags: int = 0) -> None:
        msg["header"]["type"] = msg_type  # type: ignore[index]
        msg.encode()  # type: ignore[attr-defined]
        self.sent.append((msg_type, bytes(msg.data)))  # type: ignore[attr-defined]


def _decoded(data: bytes) -> object:
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    (msg,) = list(MarshalRtnl().parse(data))
    return msg


@pytest.mark.parametrize("item", [
    Route(100, NET("192.168.0.0/24"), 2, None, "192.168.0.193"),
    Route(100, NET("0.0.0.0/0"), 2, "192.168.0.1", "192.168.0.193"),
    Route(300, NET("::/0"), 2, "fe80::1", "2001:db8:1::5", metric=1024),
    Rule(V4, 10000, 100, NET("192.168.0.193/32")),
    Rule(V6, 900, 300, NET("2001:db8:1::5/128")),
])
def test_applier_messages_decode_back_to_the_same_item(item: Route | Rule) -> None:
    from pyroute2.netlink.rtnl import RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE

    from ratbond.linux.policy import PolicyRouting, route_from_msg, rule_from_msg

    rtnl = CapturingRtnl()
    PolicyRouting(rtnl).apply(Plan(changes=[Change("add", item), Change("del", item)]))  # type: ignore[arg-type]
    (add_type, add), (del_type, _) = rtnl.sent
    if isinstance(item, Rule):
        assert (add_type, del_type) == (RTM_NEWRULE, RTM_DELRULE)
        assert rule_from_msg(_decoded(add)) == item
    else:
        assert (add_type, del_type) == (RTM_NEWROUTE, RTM_DELROUTE)
        back = route_from_msg(_decoded(add))
        assert back == item and back.proto == RTPROT_RATBOND
