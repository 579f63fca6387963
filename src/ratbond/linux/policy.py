"""Per-WAN policy routing, planned from snapshots (sans-I/O) and applied over rtnetlink.

A fresh router has each WAN's default route in the main table only; ratbond's paths need
one table per WAN, chosen by source address (``ip rule from <wan-ip> lookup <table>``).
:func:`plan_apply` turns what the kernel holds (links, addresses, routes, rules) into the
changes that build those tables from each WAN's current address and the gateway of its
default route in main; :func:`plan_remove` lists what ratbond added and nothing else.

Ownership is provable from the kernel alone, with no state file: every route ratbond adds
carries the routing protocol number :data:`RTPROT_RATBOND` (98, unassigned in
``/etc/iproute2/rt_protos``), and every rule it adds has the chosen priority and a table in
``[table_base, table_base + MAX_WANS)``.  Removal checks both before deleting anything.
:class:`PolicyRouting` is the thin I/O half over :class:`ratbond.linux.netlink.Rtnl`.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL
from pyroute2.netlink.rtnl import (
    RTM_DELROUTE,
    RTM_DELRULE,
    RTM_GETROUTE,
    RTM_GETRULE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
)
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL, fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ratbond.linux.netlink import NetlinkRequestError, Rtnl
from ratbond.linux.wan import AddrInfo, LinkInfo

__all__ = [
    "DEFAULT_PREF",
    "DEFAULT_TABLE_BASE",
    "MAX_WANS",
    "RTPROT_RATBOND",
    "Change",
    "Plan",
    "PolicyRouting",
    "Route",
    "Rule",
    "describe",
    "foreign_tables",
    "plan_apply",
    "plan_remove",
    "plan_tables",
]

#: Routing protocol number that marks a route as ratbond's (``ip route ... proto 98``).
RTPROT_RATBOND = 98
DEFAULT_TABLE_BASE = 100
DEFAULT_PREF = 10000
#: Tables ``table_base .. table_base + MAX_WANS - 1`` are ratbond's range.
MAX_WANS = 32
MAIN_TABLE = 254
_SPECIAL_TABLES = frozenset({0, 253, 254, 255})
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Route:
    """One unicast route, with what is needed to recreate or delete it exactly."""

    table: int
    dst: Network
    oif: int | None
    gateway: str | None = None
    prefsrc: str | None = None
    proto: int = RTPROT_RATBOND
    metric: int | None = None

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.dst.version == 6 else socket.AF_INET

    @property
    def scope(self) -> int:
        return RT_SCOPE_UNIVERSE if self.gateway else RT_SCOPE_LINK

    def same_path(self, other: Route) -> bool:
        """Same destination, device, next hop and source in the same table: the kernel may
        have filled in a metric (IPv6 routes get 1024), which does not make it another."""
        return (self.table, self.dst, self.oif, self.gateway, self.prefsrc) == (
            other.table, other.dst, other.oif, other.gateway, other.prefsrc)


@dataclass(frozen=True)
class Rule:
    """An ``ip rule``: ``from <src> lookup <table> pref <priority>`` (src None = all)."""

    family: int
    priority: int
    table: int
    src: Network | None = None


@dataclass(frozen=True)
class Change:
    """One kernel change: add or delete a route or a rule."""

    action: Literal["add", "del"]
    item: Route | Rule

    def command(self, names: dict[int, str]) -> str:
        """The equivalent ``ip`` command, for the user to read (and run by hand)."""
        return ip_command(self.action, self.item, names)


@dataclass
class Plan:
    """What to change, and what could not be done (each problem says why and what to do)."""

    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: WAN name -> (table, addresses) it was planned with, for the summary.
    wans: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    #: WANs left out for now, and why (only :func:`plan_tables`: a running client waits).
    waiting: list[str] = field(default_factory=list)


def ip_command(action: str, item: Route | Rule, names: dict[int, str]) -> str:
    six = "-6 " if item.family == socket.AF_INET6 else ""
    if isinstance(item, Rule):
        src = f" from {item.src}" if item.src is not None else ""
        return f"ip {six}rule {action} pref {item.priority}{src} lookup {item.table}"
    dst = "default" if item.dst.prefixlen == 0 else str(item.dst)
    parts = [f"ip {six}route {action} {dst}"]
    if item.gateway:
        parts.append(f"via {item.gateway}")
    if item.oif is not None:
        parts.append(f"dev {names.get(item.oif, item.oif)}")
    if not item.gateway:
        parts.append("scope link")
    if item.prefsrc:
        parts.append(f"src {item.prefsrc}")
    parts.append(f"table {item.table} proto {item.proto}")
    return " ".join(parts)


# -- the planner (pure) ---------------------------------------------------------------------


def _main_default(routes: Iterable[Route], oif: int, version: int) -> Route | None:
    """The interface's preferred (lowest-metric) default route in main, of one family."""
    found = [r for r in routes if r.table == MAIN_TABLE and r.dst.prefixlen == 0
             and r.dst.version == version and r.oif == oif]
    found.sort(key=lambda r: r.metric or 0)
    return found[0] if found else None


def _wan_address(addresses: Iterable[AddrInfo], index: int, version: int) -> AddrInfo | None:
    """The first usable address of a family; IPv6 only global unicast (not link-local)."""
    for addr in addresses:
        if addr.index != index or addr.address.version != version:
            continue
        if version == 6 and (addr.address.is_link_local or addr.address.is_loopback
                             or addr.address.is_multicast):
            continue
        return addr
    return None


def _desired(link: LinkInfo, table: int, pref: int, *, addresses: Sequence[AddrInfo],
             routes: Sequence[Route], plan: Plan) -> tuple[list[Route], list[Rule]]:
    name = link.name
    want_routes: list[Route] = []
    want_rules: list[Rule] = []
    used: list[str] = []
    for version in (4, 6):
        addr = _wan_address(addresses, link.index, version)
        default = _main_default(routes, link.index, version)
        if version == 4 and addr is None:
            plan.problems.append(f"{name}: no IPv4 address (is it up, has DHCP finished?); "
                                 f"check with: ip -4 addr show dev {name}")
        if version == 4 and default is None:
            plan.problems.append(f"{name}: no IPv4 default route in table main to take the "
                                 f"gateway from; add one (ip route add default via GATEWAY "
                                 f"dev {name} metric 100) or let DHCP add it")
        if addr is None or default is None:
            continue  # IPv6 is optional: only with a global address and a default route
        ip = str(addr.address)
        subnet = ipaddress.ip_interface(f"{ip}/{addr.prefixlen}").network
        full = subnet.max_prefixlen
        if subnet.prefixlen < full:
            want_routes.append(Route(table=table, dst=subnet, oif=link.index, prefsrc=ip))
        gateway = default.gateway
        if gateway is not None and version == 4 and \
                ipaddress.ip_address(gateway) not in subnet:
            # A gateway outside the subnet (a /32 lease, say) needs its own on-link route.
            want_routes.append(Route(table=table, dst=ipaddress.ip_network(f"{gateway}/32"),
                                     oif=link.index, prefsrc=ip))
        default_dst = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
        want_routes.append(Route(table=table, dst=default_dst, oif=link.index,
                                 gateway=gateway, prefsrc=ip))
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        want_rules.append(Rule(family=family, priority=pref, table=table,
                               src=ipaddress.ip_network(f"{ip}/{full}")))
        used.append(ip)
    plan.wans[name] = (table, used)
    return want_routes, want_rules


def plan_apply(wans: Sequence[str], links: Sequence[LinkInfo], addresses: Sequence[AddrInfo],
               routes: Sequence[Route], rules: Sequence[Rule], *,
               table_base: int = DEFAULT_TABLE_BASE, pref: int = DEFAULT_PREF) -> Plan:
    """The changes that give each WAN (in ``wans`` order: table ``table_base + i``) its
    table and rule(s), from its current address and main-table gateway.

    Running it again brings things up to date: what exists is kept, ratbond's own routes and
    rules that no longer match (an old DHCP address) are deleted.  A table in the range that
    holds someone else's routes is never written to: that is a problem to report.  Any
    problem means no change at all (``policy-routing apply`` is all or nothing).
    """
    plan = Plan()
    if len(set(wans)) != len(wans):
        plan.problems.append("a WAN is named twice")
    if len(wans) > MAX_WANS:
        plan.problems.append(f"at most {MAX_WANS} WANs")
    assignment = {name: table_base + i for i, name in enumerate(wans)}
    return _plan(assignment, links, addresses, routes, rules, plan=plan,
                 table_base=table_base, pref=pref, tolerant=False)


def plan_tables(assignment: Mapping[str, int], links: Sequence[LinkInfo],
                addresses: Sequence[AddrInfo], routes: Sequence[Route], rules: Sequence[Rule],
                *, table_base: int = DEFAULT_TABLE_BASE, pref: int = DEFAULT_PREF) -> Plan:
    """Like :func:`plan_apply` for a running client (``--manage-policy-routing``): WAN name
    -> table given, and a WAN that is not ready (no address or gateway yet, mid-DHCP) only
    waits -- it is listed in :attr:`Plan.waiting`, its old routes and rules go, the others
    are kept right.  Only a bad range is a problem that stops everything."""
    return _plan(assignment, links, addresses, routes, rules, plan=Plan(),
                 table_base=table_base, pref=pref, tolerant=True)


def _plan(assignment: Mapping[str, int], links: Sequence[LinkInfo],
          addresses: Sequence[AddrInfo], routes: Sequence[Route], rules: Sequence[Rule], *,
          plan: Plan, table_base: int, pref: int, tolerant: bool) -> Plan:
    _check_range(table_base, pref, plan)
    by_name = {link.name: link for link in links}
    want_routes: list[Route] = []
    want_rules: list[Rule] = []
    tables = set(range(table_base, table_base + MAX_WANS))
    notes = plan.waiting if tolerant else plan.problems
    for name, table in assignment.items():
        link = by_name.get(name)
        if table not in tables:
            plan.problems.append(f"{name}: table {table} is outside {table_base}.."
                                 f"{table_base + MAX_WANS - 1}")
            continue
        if link is None:
            notes.append(f"{name}: no such interface (see: ip -br link)")
            continue
        foreign = [r for r in routes if r.table == table and r.proto != RTPROT_RATBOND]
        if foreign:
            notes.append(f"table {table} (for {name}) already holds routes ratbond did "
                         f"not add (ip route show table {table}); pick another --table-base")
            continue
        found = Plan()
        r, u = _desired(link, table, pref, addresses=addresses, routes=routes, plan=found)
        notes += found.problems  # a family without address or gateway gets nothing
        plan.wans.update(found.wans)
        want_routes += r
        want_rules += u
    if plan.problems:
        plan.changes = []
        return plan
    plan.changes = _changes(routes, rules, want_routes, want_rules, tables=tables, pref=pref)
    return plan


def foreign_tables(routes: Sequence[Route], *, table_base: int = DEFAULT_TABLE_BASE) -> set[int]:
    """Tables in ratbond's range that hold routes ratbond did not add (never to be used)."""
    return {r.table for r in routes if table_base <= r.table < table_base + MAX_WANS
            and r.proto != RTPROT_RATBOND}


def _changes(routes: Sequence[Route], rules: Sequence[Rule], want_routes: Sequence[Route],
             want_rules: Sequence[Rule], *, tables: set[int], pref: int) -> list[Change]:
    """What turns ratbond's current routes and rules in ``tables`` into the wanted ones,
    in an order the kernel accepts: routes before rules when adding (a rule never points at
    an empty table), rules before routes when deleting."""
    changes: list[Change] = []
    ours = [r for r in routes if r.table in tables and r.proto == RTPROT_RATBOND]
    changes += [Change("del", r) for r in ours if not any(r.same_path(w) for w in want_routes)]
    changes += [Change("add", w) for w in want_routes if not any(w.same_path(r) for r in ours)]
    mine = [r for r in rules if r.priority == pref and r.table in tables]
    changes += [Change("del", r) for r in mine if r not in want_rules]
    changes += [Change("add", w) for w in want_rules if w not in mine]
    changes.sort(key=_order)
    return changes


def plan_remove(routes: Sequence[Route], rules: Sequence[Rule], *,
                table_base: int = DEFAULT_TABLE_BASE, pref: int = DEFAULT_PREF) -> Plan:
    """Every rule and route ratbond added in this range, and nothing else."""
    plan = Plan()
    _check_range(table_base, pref, plan)
    if plan.problems:
        return plan
    tables = range(table_base, table_base + MAX_WANS)
    plan.changes = [Change("del", r) for r in rules if r.priority == pref and r.table in tables]
    plan.changes += [Change("del", r) for r in routes
                     if r.table in tables and r.proto == RTPROT_RATBOND]
    return plan


def _check_range(table_base: int, pref: int, plan: Plan) -> None:
    tables = set(range(table_base, table_base + MAX_WANS))
    if table_base < 1 or table_base + MAX_WANS > 2**31 or tables & _SPECIAL_TABLES:
        plan.problems.append(f"--table-base {table_base}: tables {table_base}.."
                             f"{table_base + MAX_WANS - 1} must avoid 0 and 253-255")
    if not 1 <= pref <= 32765:
        plan.problems.append(f"--pref {pref}: must be 1..32765 (before the main table's rule "
                             "32766)")


def _order(change: Change) -> int:
    is_rule = isinstance(change.item, Rule)
    if change.action == "del":
        return 0 if is_rule else 1
    return 3 if is_rule else 2


def describe(links: Sequence[LinkInfo], addresses: Sequence[AddrInfo], routes: Sequence[Route],
             rules: Sequence[Rule], *, ignore: Sequence[str] = ()) -> list[str]:
    """``policy-routing show``: interfaces with a default route, their tables and rules,
    and for each what is missing with the command that fixes it."""
    lines: list[str] = []
    candidates: list[str] = []
    for link in sorted(links, key=lambda lk: lk.index):
        if link.name in ignore:
            continue
        defaults = [r for r in routes if r.dst.prefixlen == 0 and r.oif == link.index]
        if not defaults:
            continue
        state = "up" if link.up and link.carrier else "DOWN"
        lines.append(f"{link.name} ({state}):")
        for version in (4, 6):
            lines += _describe_family(link, version, defaults, addresses=addresses,
                                      routes=routes, rules=rules, candidates=candidates)
    if not lines:
        lines.append("no interface has a default route: configure the WANs first")
    if candidates:
        wan_flags = " ".join(f"--wan {n}" for n in candidates)
        lines.append(f"fix: ratbond policy-routing apply {wan_flags} (or run the client "
                     "with --manage-policy-routing)")
    ours = [r for r in routes if r.proto == RTPROT_RATBOND]
    if ours:
        lines.append(f"{len(ours)} route(s) added by ratbond (proto {RTPROT_RATBOND}): "
                     f"ip route show table all proto {RTPROT_RATBOND}")
    return lines


def _describe_family(link: LinkInfo, version: int, defaults: Sequence[Route], *,
                     addresses: Sequence[AddrInfo], routes: Sequence[Route],
                     rules: Sequence[Rule], candidates: list[str]) -> list[str]:
    """One interface's IPv4 or IPv6 lines of :func:`describe` (and whether it is a WAN
    ``apply`` could set up: appended to ``candidates``)."""
    addr = _wan_address(addresses, link.index, version)
    main = _main_default(routes, link.index, version)
    tables = sorted({r.table for r in defaults if r.dst.version == version
                     and r.table not in _SPECIAL_TABLES})
    if addr is None and main is None and not tables:
        return []
    ip = str(addr.address) if addr else None
    gw = main.gateway if main and main.gateway else ("on-link" if main else None)
    lines = [f"  IPv{version} address {ip or 'none'}, default in main "
             f"{'via ' + gw if gw else 'none'}, per-WAN table(s) "
             f"{', '.join(map(str, tables)) or 'none'}"]
    if ip is None:
        return lines
    host = ipaddress.ip_network(ip)
    selecting = [u for u in rules if u.src == host]
    lines += [f"  rule pref {u.priority} from {ip} lookup {u.table}" for u in selecting]
    if not tables:
        lines.append(f"  MISSING: no table of its own with a default route via "
                     f"{link.name}: ratbond does not see it as a WAN")
        if version == 4:
            candidates.append(link.name)
    elif not any(u.table in tables for u in selecting):
        lines.append(f"  MISSING: no rule 'from {ip} lookup {tables[0]}': replies to "
                     f"this address would leave by the main table; fix: "
                     f"ip {'-6 ' if version == 6 else ''}rule add pref "
                     f"{DEFAULT_PREF} from {ip} lookup {tables[0]}")
    return lines


# -- the applier (rtnetlink) ---------------------------------------------------------------

_GONE = (errno.ESRCH, errno.ENOENT)


def route_from_msg(msg: Any) -> Route | None:
    """A kernel route message as a :class:`Route`; None for what this module ignores
    (non-unicast, multipath, cached routes)."""
    family = int(msg["family"])
    if family not in (socket.AF_INET, socket.AF_INET6) or int(msg["type"]) != RTN_UNICAST:
        return None
    if msg.get_attr("RTA_MULTIPATH"):
        return None
    table = msg.get_attr("RTA_TABLE")
    table = int(msg["table"]) if table is None else int(table)
    dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
    oif = msg.get_attr("RTA_OIF")
    metric = msg.get_attr("RTA_PRIORITY")
    return Route(table=table, dst=ipaddress.ip_network(f"{dst}/{int(msg['dst_len'])}",
                                                       strict=False),
                 oif=None if oif is None else int(oif), gateway=msg.get_attr("RTA_GATEWAY"),
                 prefsrc=msg.get_attr("RTA_PREFSRC"), proto=int(msg["proto"]),
                 metric=None if metric is None else int(metric))


def rule_from_msg(msg: Any) -> Rule | None:
    """A kernel rule as a :class:`Rule`; None for rules that are not plain lookups."""
    family = int(msg["family"])
    if family not in (socket.AF_INET, socket.AF_INET6) or int(msg["action"]) != FR_ACT_TO_TBL:
        return None
    if int(msg["dst_len"]) or msg.get_attr("FRA_IIFNAME") or msg.get_attr("FRA_OIFNAME") \
            or msg.get_attr("FRA_FWMARK") or int(msg["tos"]) or int(msg["flags"]):
        return None  # more selective than 'from SRC': not a rule ratbond could have made
    table = msg.get_attr("FRA_TABLE")
    table = int(msg["table"]) if table is None else int(table)
    src = msg.get_attr("FRA_SRC")
    return Rule(family=family, priority=int(msg.get_attr("FRA_PRIORITY") or 0), table=table,
                src=None if src is None else ipaddress.ip_network(
                    f"{src}/{int(msg['src_len'])}", strict=False))


class PolicyRouting:
    """Reads the kernel's state and applies a :class:`Plan` (``ip`` semantics, netlink)."""

    def __init__(self, rtnl: Rtnl) -> None:
        self._rtnl = rtnl

    def links(self) -> list[LinkInfo]:
        return self._rtnl.links()

    def addresses(self) -> list[AddrInfo]:
        return self._rtnl.addresses()

    def routes(self) -> list[Route]:
        out: list[Route] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            msg = rtmsg()
            msg["family"] = family
            out += filter(None, (route_from_msg(m) for m in self._rtnl.dump(msg, RTM_GETROUTE)))
        return out

    def rules(self) -> list[Rule]:
        out: list[Rule] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            msg = fibmsg()
            msg["family"] = family
            out += filter(None, (rule_from_msg(m) for m in self._rtnl.dump(msg, RTM_GETRULE)))
        return out

    def plan_apply(self, wans: Sequence[str], *, table_base: int = DEFAULT_TABLE_BASE,
                   pref: int = DEFAULT_PREF) -> Plan:
        return plan_apply(wans, self.links(), self.addresses(), self.routes(), self.rules(),
                          table_base=table_base, pref=pref)

    def plan_remove(self, *, table_base: int = DEFAULT_TABLE_BASE,
                    pref: int = DEFAULT_PREF) -> Plan:
        return plan_remove(self.routes(), self.rules(), table_base=table_base, pref=pref)

    def apply(self, plan: Plan) -> None:
        """Make every change; an add that exists or a delete already gone is not an error."""
        for change in plan.changes:
            try:
                if isinstance(change.item, Rule):
                    self._rule(change.action, change.item)
                else:
                    self._route(change.action, change.item)
            except NetlinkRequestError as exc:
                if not ((change.action == "add" and exc.errno == errno.EEXIST)
                        or (change.action == "del" and exc.errno in _GONE)):
                    raise

    def _rule(self, action: str, rule: Rule) -> None:
        msg = fibmsg()
        msg["family"] = rule.family
        msg["action"] = FR_ACT_TO_TBL
        msg["table"] = rule.table if rule.table < 256 else 252
        attrs: list[tuple[str, object]] = [("FRA_TABLE", rule.table),
                                           ("FRA_PRIORITY", rule.priority)]
        if rule.src is not None:
            msg["src_len"] = rule.src.prefixlen
            attrs.append(("FRA_SRC", str(rule.src.network_address)))
        msg["attrs"] = attrs
        if action == "add":
            self._rtnl.request(msg, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL)
        else:
            self._rtnl.request(msg, RTM_DELRULE)

    def _route(self, action: str, route: Route) -> None:
        msg = rtmsg()
        msg["family"] = route.family
        msg["dst_len"] = route.dst.prefixlen
        msg["table"] = route.table if route.table < 256 else 252
        msg["type"] = RTN_UNICAST
        msg["proto"] = route.proto
        msg["scope"] = route.scope
        attrs: list[tuple[str, object]] = [("RTA_TABLE", route.table)]
        if route.dst.prefixlen:
            attrs.append(("RTA_DST", str(route.dst.network_address)))
        if route.oif is not None:
            attrs.append(("RTA_OIF", route.oif))
        if route.gateway:
            attrs.append(("RTA_GATEWAY", route.gateway))
        if route.prefsrc:
            attrs.append(("RTA_PREFSRC", route.prefsrc))
        if route.metric is not None:
            attrs.append(("RTA_PRIORITY", route.metric))
        msg["attrs"] = attrs
        if action == "add":
            self._rtnl.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)
        else:
            self._rtnl.request(msg, RTM_DELROUTE)
