"""--manage-policy-routing's keeper on a modelled kernel: which WANs, which tables, a new
lease followed, a WAN gone, exit removes only what it added (the real kernel: e2e)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from ratbond.config import POLICY_PREF, POLICY_TABLE_BASE, ConfigError, client_settings
from ratbond.linux.policy import (
    DEFAULT_PREF,
    DEFAULT_TABLE_BASE,
    RTPROT_RATBOND,
    Change,
    Plan,
    Route,
    Rule,
    plan_tables,
)
from ratbond.linux.policy_keeper import (
    PolicyKeeper,
    PolicyRoutingError,
    assign_tables,
    wan_candidates,
)
from ratbond.linux.wan import AddrInfo, LinkInfo

V4, V6 = socket.AF_INET, socket.AF_INET6
NET = ipaddress.ip_network


def addr(index: int, text: str, prefixlen: int) -> AddrInfo:
    ip = ipaddress.ip_address(text)
    return AddrInfo(index, ip, prefixlen, V4 if ip.version == 4 else V6)


class ModelKernel:
    """PolicyRouting's interface over lists; add/del behave like the kernel's (EEXIST and
    ENOENT are not errors for PolicyRouting.apply either)."""

    def __init__(self) -> None:
        self.link_list = [LinkInfo(1, "lo", True, True), LinkInfo(2, "wan1", True, True),
                          LinkInfo(3, "wan2", True, True), LinkInfo(4, "br-lan", True, True),
                          LinkInfo(5, "tun660", True, True)]
        self.addr_list = [addr(2, "10.201.1.2", 24), addr(3, "10.201.2.2", 24),
                          addr(4, "192.168.1.1", 24), addr(5, "10.10.10.1", 30)]
        self.route_list = [Route(254, NET("0.0.0.0/0"), 2, "10.201.1.1", proto=16, metric=101),
                           Route(254, NET("0.0.0.0/0"), 3, "10.201.2.1", proto=16, metric=102),
                           Route(254, NET("0.0.0.0/1"), 5, "10.10.10.2", proto=4),
                           Route(254, NET("10.201.1.0/24"), 2, None, "10.201.1.2", proto=2),
                           Route(254, NET("10.201.2.0/24"), 3, None, "10.201.2.2", proto=2),
                           Route(254, NET("192.168.1.0/24"), 4, None, "192.168.1.1", proto=2)]
        self.rule_list = [Rule(V4, 0, 255), Rule(V4, 32766, 254), Rule(V4, 32767, 253)]
        self.refuse = False

    def links(self) -> list[LinkInfo]:
        return list(self.link_list)

    def addresses(self) -> list[AddrInfo]:
        return list(self.addr_list)

    def routes(self) -> list[Route]:
        return list(self.route_list)

    def rules(self) -> list[Rule]:
        return list(self.rule_list)

    def apply(self, plan: Plan) -> None:
        for change in plan.changes:
            if self.refuse:
                raise PermissionError(1, "Operation not permitted")
            items: list[Route] | list[Rule] = (self.rule_list if isinstance(change.item, Rule)
                                               else self.route_list)
            if change.action == "add" and change.item not in items:
                items.append(change.item)  # type: ignore[arg-type]
            elif change.action == "del" and change.item in items:
                items.remove(change.item)  # type: ignore[arg-type]

    def ours(self) -> tuple[list[Route], list[Rule]]:
        return ([r for r in self.route_list if r.proto == RTPROT_RATBOND],
                [r for r in self.rule_list if r.priority == DEFAULT_PREF])


def keeper(kernel: ModelKernel, **kwargs: object) -> PolicyKeeper:
    return PolicyKeeper(kernel, ignore=["tun660"],  # type: ignore[arg-type]
                        table_base=DEFAULT_TABLE_BASE,
                        pref=DEFAULT_PREF, **kwargs)  # type: ignore[arg-type]


def test_candidates_are_interfaces_with_a_default_route_in_main_narrowed_by_globs() -> None:
    k = ModelKernel()
    assert wan_candidates(k.link_list, k.route_list, ignore=["tun660"]) == ["wan1", "wan2"]
    assert wan_candidates(k.link_list, k.route_list, include=["wan2"]) == ["wan2"]
    assert wan_candidates(k.link_list, k.route_list, exclude=["wan*"]) == []
    # A default in another table only (already a WAN table) does not make a candidate.
    other = [Route(100, NET("0.0.0.0/0"), 4, "192.168.1.254", proto=4)]
    assert wan_candidates(k.link_list, other) == []


def test_tables_stay_with_their_wan_and_foreign_tables_are_skipped() -> None:
    tables, full = assign_tables({}, ["wan1", "wan2"], table_base=100, blocked={100})
    assert tables == {"wan1": 101, "wan2": 102} and full == []
    # wan1 left and came back after wan3 appeared: it keeps 101, wan3 gets the next free.
    again, _ = assign_tables(tables, ["wan3", "wan1"], table_base=100, blocked={100})
    assert again == {"wan3": 103, "wan1": 101}
    hinted, _ = assign_tables({}, ["wan1"], table_base=100, hints={"wan1": 107})
    assert hinted == {"wan1": 107}
    crowded, full = assign_tables({}, ["a", "b"], table_base=100, blocked=range(101, 132))
    assert crowded == {"a": 100} and full == ["b"]


def test_start_builds_both_tables_and_a_second_sync_changes_nothing() -> None:
    k = ModelKernel()
    keep = keeper(k)
    result = keep.sync()
    assert result.tables == {"wan1": 100, "wan2": 101}
    routes, rules = k.ours()
    assert sorted((r.table, str(r.src)) for r in rules) == [(100, "10.201.1.2/32"),
                                                          (101, "10.201.2.2/32")]
    assert Route(100, NET("0.0.0.0/0"), 2, "10.201.1.1", "10.201.1.2") in routes
    assert all(r.oif != 5 for r in routes), "the TUN never gets a table"
    assert keep.sync().changes == []
    assert keep.added == len(routes) + len(rules) == 6


def test_new_lease_moves_rule_and_routes_and_exit_leaves_the_kernel_as_before() -> None:
    k = ModelKernel()
    before = (k.routes(), k.rules())
    keep = keeper(k)
    keep.sync()
    # DHCP: wan1 10.201.1.2 -> 10.201.1.7, new gateway .254
    k.addr_list[0] = addr(2, "10.201.1.7", 24)
    k.route_list[0] = Route(254, NET("0.0.0.0/0"), 2, "10.201.1.254", proto=16, metric=101)
    k.route_list[3] = Route(254, NET("10.201.1.0/24"), 2, None, "10.201.1.7", proto=2)
    changed = keep.sync().changes
    assert Change("add", Rule(V4, DEFAULT_PREF, 100, NET("10.201.1.7/32"))) in changed
    assert Change("del", Rule(V4, DEFAULT_PREF, 100, NET("10.201.1.2/32"))) in changed
    assert Route(100, NET("0.0.0.0/0"), 2, "10.201.1.254", "10.201.1.7") in k.route_list
    assert all(c.item.table == 100 for c in changed)  # wan2 untouched
    removed = keep.remove_added()
    assert len(removed) == 6 and {c.action for c in removed} == {"del"}
    assert k.ours() == ([], [])
    main_before = [r for r in before[0] if r.table == 254 and r.oif != 2]
    assert [r for r in k.route_list if r.table == 254 and r.oif != 2] == main_before
    assert k.rules() == before[1]
    assert keep.remove_added() == []


def test_a_wan_that_loses_its_default_route_loses_its_table_and_gets_it_back() -> None:
    k = ModelKernel()
    keep = keeper(k)
    keep.sync()
    lost = k.route_list.pop(1)  # wan2's default in main
    keep.sync()
    assert {r.table for r in k.ours()[0]} == {100}
    k.route_list.append(lost)
    assert keep.sync().tables == {"wan1": 100, "wan2": 101}
    assert {r.table for r in k.ours()[1]} == {100, 101}


def test_mid_dhcp_wan_waits_while_the_other_is_kept() -> None:
    k = ModelKernel()
    k.addr_list.pop(1)  # wan2 has its default route but no address yet
    result = keeper(k).sync()
    assert any(line.startswith("wan2: no IPv4 address") for line in result.waiting)
    assert {r.table for r in k.ours()[1]} == {100}


def test_what_was_there_before_stays_after_exit() -> None:
    k = ModelKernel()
    first = keeper(k)
    first.sync()  # e.g. 'policy-routing apply' at boot
    snapshot = (k.routes(), k.rules())
    second = keeper(k)
    assert second.sync().changes == [] and second.added == 0
    assert second.remove_added() == []
    assert (k.routes(), k.rules()) == snapshot


def test_refused_change_raises_oserror_and_what_was_added_is_still_removed() -> None:
    k = ModelKernel()
    keep = keeper(k)
    keep.sync()
    k.addr_list[1] = addr(3, "10.201.2.9", 24)
    k.refuse = True
    with pytest.raises(OSError):
        keep.sync()
    k.refuse = False
    keep.remove_added()
    assert not [r for r in k.ours()[1] if str(r.src) == "10.201.1.2/32"]


def test_bad_range_is_a_user_facing_error() -> None:
    k = ModelKernel()
    keep = PolicyKeeper(k, table_base=240, pref=DEFAULT_PREF)  # type: ignore[arg-type]
    with pytest.raises(PolicyRoutingError, match="253-255") as info:
        keep.sync()
    assert getattr(info.value, "user_facing", False)
    assert k.ours() == ([], [])


def test_plan_tables_ipv6_only_family_is_planned_without_ipv4() -> None:
    k = ModelKernel()
    k.addr_list = [addr(2, "2001:db8:1::2", 64)]
    routes = [Route(254, NET("::/0"), 2, "fe80::1", proto=16, metric=1024)]
    plan = plan_tables({"wan1": 100}, k.link_list, k.addr_list, routes, k.rule_list)
    assert plan.problems == []
    assert Rule(V6, DEFAULT_PREF, 100, NET("2001:db8:1::2/128")) in [c.item for c in plan.changes]
    assert any("no IPv4 address" in line for line in plan.waiting)


def test_client_flags_and_their_errors() -> None:
    assert (POLICY_TABLE_BASE, POLICY_PREF) == (DEFAULT_TABLE_BASE, DEFAULT_PREF)
    c = client_settings({"connect-addr": "h:1", "manage-policy-routing": True,
                         "policy-table-base": "300", "policy-pref": 900}, {})
    assert c.manage_policy_routing and c.policy_table_base == 300 and c.policy_pref == 900
    assert not client_settings({"connect-addr": "h:1"}, {}).manage_policy_routing
    with pytest.raises(ConfigError, match=r"--policy-table-base: 240 makes tables 240\.\.271"):
        client_settings({"connect-addr": "h:1", "policy-table-base": 240}, {})
    with pytest.raises(ConfigError, match=r"--policy-pref: 40000 is outside .*1\.\.32765"):
        client_settings({"connect-addr": "h:1", "policy-pref": 40000}, {})
