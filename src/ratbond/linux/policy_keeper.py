"""``ratbond client --manage-policy-routing``: per-WAN tables and rules kept right while
the client runs, and exactly what it added removed on exit.

A fresh router has each WAN's default route in main only.  The keeper picks those WANs
(:func:`wan_candidates`), gives each a table that stays its own for the life of the process
(:func:`assign_tables`), and lets :func:`ratbond.linux.policy.plan_tables` say what to
change; it runs again after every burst of netlink events (a new DHCP lease, a changed
gateway, a WAN appearing or leaving) and on the periodic rescan.  The client's WAN watcher
then sees the tables appear and opens its paths, exactly as with hand-made tables.

Only what this process added is removed at exit: rules and routes that were already there
(a ``policy-routing apply`` at boot, a crashed run's leftovers) stay.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from ratbond.linux.policy import (
    MAIN_TABLE,
    MAX_WANS,
    RTPROT_RATBOND,
    Change,
    Plan,
    PolicyRouting,
    Route,
    Rule,
    foreign_tables,
    plan_tables,
)
from ratbond.linux.wan import AddrInfo, LinkInfo

__all__ = ["PolicyKeeper", "PolicyRoutingError", "assign_tables", "wan_candidates"]

log = logging.getLogger("ratbond.policy")


class PolicyRoutingError(RuntimeError):
    """--manage-policy-routing cannot work with these settings; the message says why."""

    user_facing = True  # ratbond.startup_errors prints it as is, exit code 1


def wan_candidates(links: Sequence[LinkInfo], routes: Iterable[Route], *,
                   include: Sequence[str] = (), exclude: Sequence[str] = (),
                   ignore: Sequence[str] = ()) -> list[str]:
    """Interfaces with a default route in main (the WANs of a fresh router), by index,
    narrowed by ``--wan``/``--exclude-wan`` globs; ``ignore`` (the client's TUN) never."""
    with_default = {r.oif for r in routes if r.table == MAIN_TABLE and r.dst.prefixlen == 0
                    and r.oif is not None}
    names = []
    for link in sorted(links, key=lambda lk: lk.index):
        if link.index not in with_default or link.name in ignore or link.name == "lo":
            continue
        if include and not any(fnmatchcase(link.name, g) for g in include):
            continue
        if any(fnmatchcase(link.name, g) for g in exclude):
            continue
        names.append(link.name)
    return names


def assign_tables(known: Mapping[str, int], names: Sequence[str], *, table_base: int,
                  blocked: Iterable[int] = (), hints: Mapping[str, int] | None = None
                  ) -> tuple[dict[str, int], list[str]]:
    """Table per WAN in ``names``: the one it had (``known``), else the one an existing rule
    of ours already gives its address (``hints``), else the lowest free one in the range.

    Returns the assignment and the names that found no free table.  A table stays with its
    WAN after the WAN leaves, so a WAN that comes back gets the same one.
    """
    taken = set(known.values()) | set(blocked)
    out: dict[str, int] = {}
    full: list[str] = []
    for name in names:
        if name in known:
            out[name] = known[name]
            continue
        hint = (hints or {}).get(name)
        table: int | None = hint
        if hint is None or hint in taken:
            table = next((t for t in range(table_base, table_base + MAX_WANS) if t not in taken),
                         None)
        if table is None:
            full.append(name)
            continue
        taken.add(table)
        out[name] = table
    return out, full


def _rule_hints(links: Sequence[LinkInfo], addresses: Sequence[AddrInfo], rules: Sequence[Rule],
                *, table_base: int, pref: int) -> dict[str, int]:
    """WAN name -> table of a ratbond rule that already selects one of its addresses."""
    names = {link.index: link.name for link in links}
    hints: dict[str, int] = {}
    for rule in rules:
        if rule.priority != pref or rule.src is None or \
                not table_base <= rule.table < table_base + MAX_WANS:
            continue
        for addr in addresses:
            if rule.src.prefixlen == rule.src.max_prefixlen and \
                    addr.address == rule.src.network_address and addr.index in names:
                hints.setdefault(names[addr.index], rule.table)
    return hints


@dataclass
class SyncResult:
    """What one :meth:`PolicyKeeper.sync` did."""

    changes: list[Change] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    tables: dict[str, int] = field(default_factory=dict)


class PolicyKeeper:
    """Applies :func:`plan_tables` for the client's WANs and remembers what it added."""

    def __init__(self, policy: PolicyRouting, *, include: Sequence[str] = (),
                 exclude: Sequence[str] = (), ignore: Sequence[str] = (),
                 table_base: int, pref: int) -> None:
        self._policy = policy
        self._include = tuple(include)
        self._exclude = tuple(exclude)
        self._ignore = tuple(ignore)
        self.table_base = table_base
        self.pref = pref
        self._tables: dict[str, int] = {}
        self._added_routes: list[Route] = []
        self._added_rules: list[Rule] = []
        self._waiting: tuple[str, ...] = ()

    @property
    def tables(self) -> dict[str, int]:
        """WAN name -> its table (every WAN seen so far)."""
        return dict(self._tables)

    @property
    def added(self) -> int:
        """How many routes and rules this process added that are still its to remove."""
        return len(self._added_routes) + len(self._added_rules)

    def sync(self) -> SyncResult:
        """Read the kernel, plan, apply; raises :class:`PolicyRoutingError` for a range that
        cannot work and ``OSError`` when the kernel refuses (the caller retries later)."""
        policy = self._policy
        links, addresses = policy.links(), policy.addresses()
        routes, rules = policy.routes(), policy.rules()
        names = wan_candidates(links, routes, include=self._include, exclude=self._exclude,
                               ignore=self._ignore)
        hints = _rule_hints(links, addresses, rules, table_base=self.table_base, pref=self.pref)
        assignment, full = assign_tables(self._tables, names, table_base=self.table_base,
                                         blocked=foreign_tables(routes,
                                                                table_base=self.table_base),
                                         hints=hints)
        self._tables.update(assignment)
        plan = plan_tables(assignment, links, addresses, routes, rules,
                           table_base=self.table_base, pref=self.pref)
        if plan.problems:
            raise PolicyRoutingError("--manage-policy-routing: " + "; ".join(plan.problems))
        plan.waiting += [f"{name}: no free table in {self.table_base}.."
                         f"{self.table_base + MAX_WANS - 1} (others hold routes ratbond did not "
                         "add); use --policy-table-base" for name in full]
        self._apply(plan, {link.index: link.name for link in links})
        self._report_waiting(plan.waiting)
        return SyncResult(changes=plan.changes, waiting=plan.waiting, tables=assignment)

    def _apply(self, plan: Plan, names: dict[int, str]) -> None:
        for change in plan.changes:
            # One change at a time, so what was added before a refusal is still recorded.
            self._policy.apply(Plan(changes=[change]))
            log.info("policy routing: %s", change.command(names))
            self._record(change)

    def _record(self, change: Change) -> None:
        item = change.item
        if isinstance(item, Rule):
            if change.action == "add":
                self._added_rules.append(item)
            else:
                self._added_rules = [r for r in self._added_rules if r != item]
        elif change.action == "add":
            self._added_routes.append(item)
        else:
            self._added_routes = [r for r in self._added_routes if not r.same_path(item)]

    def _report_waiting(self, waiting: Sequence[str]) -> None:
        """Say each new reason a WAN waits once (a lease takes seconds: no log flood)."""
        current = tuple(waiting)
        for line in current:
            if line not in self._waiting:
                log.warning("policy routing: waiting for %s", line)
        self._waiting = current

    def remove_added(self) -> list[Change]:
        """Delete what this process added and the kernel still holds (rules first); returns
        the changes made.  Idempotent."""
        policy = self._policy
        routes, rules = policy.routes(), policy.rules()
        names = {link.index: link.name for link in policy.links()}
        tables = range(self.table_base, self.table_base + MAX_WANS)
        changes = [Change("del", r) for r in rules if r in self._added_rules]
        changes += [Change("del", r) for r in routes
                    if r.table in tables and r.proto == RTPROT_RATBOND
                    and any(r.same_path(a) for a in self._added_routes)]
        policy.apply(Plan(changes=changes))
        for change in changes:
            log.info("policy routing: %s", change.command(names))
        self._added_routes, self._added_rules = [], []
        return changes
