"""Which interfaces are WAN links, and when that changes (sans-I/O).

A WAN link is an interface with a unicast default route in a routing table of its own
(anything but unspec 0, main 254 and local 255): the "source-based policy routing" setup
the original ratbond requires.  :class:`WanTable` holds plain snapshots of links,
addresses and default routes, fed either by a full scan (:meth:`WanTable.replace_all`) or by
single netlink changes, and turns differences into events.  It never reads a clock nor
touches netlink; :mod:`ratbond.linux.netlink` is the I/O half.

Losing a WAN is reported at once (the bond must stop using it now); gaining one waits
until it has been stable for ``debounce`` seconds (a link that went down once is back
within ~0.1 s), and that hold-down doubles with every further flap (up to
``max_holddown``), so a flapping link produces a handful of events, not a storm.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Tables whose default routes never make a WAN: unspec, main and local.
NON_WAN_TABLES = frozenset({0, 254, 255})


class WanTableError(ValueError):
    """The table was misused (bad arguments); never raised for odd kernel data."""


@dataclass(frozen=True)
class LinkInfo:
    """One interface as netlink reports it."""

    index: int
    name: str
    up: bool  # administratively up (IFF_UP)
    carrier: bool  # lower layer up (IFF_LOWER_UP)


@dataclass(frozen=True)
class AddrInfo:
    """One usable address of an interface (tentative IPv6 addresses are not reported)."""

    index: int
    address: IPAddress
    prefixlen: int
    family: int


@dataclass(frozen=True)
class RouteInfo:
    """One unicast route; only default routes (``dst_len == 0``) matter here."""

    table: int
    dst_len: int
    oif: int | None
    gateway: str | None
    prefsrc: str | None
    family: int


@dataclass(frozen=True)
class WanLink:
    """A WAN link the bond may use: bind a path socket to ``name`` and ``address``."""

    name: str
    index: int
    address: IPAddress
    table: int
    family: int


class DownReason(str, enum.Enum):
    """Why a WAN left the set (first failing condition, checked in this order)."""

    LINK_REMOVED = "link-removed"
    LINK_DOWN = "link-down"
    CARRIER_LOST = "carrier-lost"
    ROUTE_REMOVED = "route-removed"
    ADDRESS_REMOVED = "address-removed"
    FILTERED = "filtered"  # name no longer passes --wan/--exclude-wan, or it changed table


@dataclass(frozen=True)
class WanAdded:
    """A WAN link became usable (after its hold-down)."""

    wan: WanLink


@dataclass(frozen=True)
class WanRemoved:
    """A WAN link stopped being usable; its paths leave the bond now."""

    wan: WanLink
    reason: DownReason


@dataclass(frozen=True)
class WanAddressChanged:
    """Same interface and table, new source address: rebind sockets, keep the session."""

    old: WanLink
    new: WanLink


WanEvent = WanAdded | WanRemoved | WanAddressChanged

_Key = tuple[int, int]  # (ifindex, family): one WAN per interface and address family


def _route_key(route: RouteInfo) -> tuple[int, int, int | None, str | None]:
    # A route replace keeps this identity and may change prefsrc.
    return (route.table, route.family, route.oif, route.gateway)


def _parse_ip(text: str | None) -> IPAddress | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class WanTable:
    """Current WAN links computed from link, address and route snapshots."""

    def __init__(self, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 ignore_devices: Sequence[str] = (), debounce: float = 0.1,
                 max_holddown: float = 10.0, flap_decay: float = 30.0) -> None:
        if debounce < 0 or max_holddown < debounce or flap_decay <= 0:
            raise WanTableError("need 0 <= debounce <= max_holddown and flap_decay > 0")
        self._include = tuple(include)
        self._exclude = tuple(exclude) + tuple(ignore_devices)
        self._debounce = debounce
        self._max_holddown = max_holddown
        self._flap_decay = flap_decay
        self._links: dict[int, LinkInfo] = {}
        self._addrs: dict[int, list[AddrInfo]] = {}  # per ifindex, in arrival order
        self._routes: dict[tuple[int, int, int | None, str | None], RouteInfo] = {}
        self._active: dict[_Key, WanLink] = {}
        self._pending: dict[_Key, float] = {}  # key -> time it may be added
        self._flaps: dict[_Key, tuple[int, float]] = {}  # key -> (penalty, last flap time)
        self._events: deque[WanEvent] = deque()
        self._scanned = False

    # -- inputs -----------------------------------------------------------------------

    def replace_all(self, links: Iterable[LinkInfo], addrs: Iterable[AddrInfo],
                    routes: Iterable[RouteInfo], now: float) -> None:
        """A full scan: replaces every snapshot; events only for what changed.

        The very first scan adds its WANs at once (nothing is flapping yet at start-up).
        """
        self._links = {link.index: link for link in links}
        self._addrs = {}
        for addr in addrs:
            self._store_addr(addr)
        self._routes = {}
        for route in routes:
            if self._is_default(route):
                self._routes[_route_key(route)] = route
        first = not self._scanned
        self._scanned = True
        self._update(now, immediate=first)

    def link_changed(self, link: LinkInfo, now: float) -> None:
        self._links[link.index] = link
        self._update(now)

    def link_removed(self, index: int, now: float) -> None:
        self._links.pop(index, None)
        self._addrs.pop(index, None)
        for key in [k for k, r in self._routes.items() if r.oif == index]:
            del self._routes[key]
        self._update(now)

    def addr_added(self, addr: AddrInfo, now: float) -> None:
        self._store_addr(addr)
        self._update(now)

    def addr_removed(self, addr: AddrInfo, now: float) -> None:
        kept = [a for a in self._addrs.get(addr.index, []) if a.address != addr.address]
        if kept:
            self._addrs[addr.index] = kept
        else:
            self._addrs.pop(addr.index, None)
        self._update(now)

    def route_added(self, route: RouteInfo, now: float) -> None:
        if self._is_default(route):
            self._routes[_route_key(route)] = route
            self._update(now)

    def route_removed(self, route: RouteInfo, now: float) -> None:
        if self._routes.pop(_route_key(route), None) is not None:
            self._update(now)

    # -- outputs ----------------------------------------------------------------------

    def next_event(self) -> WanEvent | None:
        return self._events.popleft() if self._events else None

    def wans(self) -> list[WanLink]:
        """The WAN links reported so far (added and not removed), by name."""
        return sorted(self._active.values(), key=lambda w: (w.name, w.family))

    def get_timer(self) -> float | None:
        """When a pending WAN may be added; ``None`` when nothing waits."""
        return min(self._pending.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Add the pending WANs whose hold-down has passed."""
        self._update(now)

    # -- the rules --------------------------------------------------------------------

    @staticmethod
    def _is_default(route: RouteInfo) -> bool:
        return route.dst_len == 0 and route.table not in NON_WAN_TABLES and route.oif is not None

    def _store_addr(self, addr: AddrInfo) -> None:
        current = self._addrs.setdefault(addr.index, [])
        for i, known in enumerate(current):
            if known.address == addr.address:
                current[i] = addr
                return
        current.append(addr)

    def _name_allowed(self, name: str) -> bool:
        if self._include and not any(fnmatchcase(name, g) for g in self._include):
            return False
        return not any(fnmatchcase(name, g) for g in self._exclude)

    def _address_for(self, route: RouteInfo) -> IPAddress | None:
        prefsrc = _parse_ip(route.prefsrc)
        # The preferred source wins when it is really assigned somewhere (bindable).
        if prefsrc is not None and any(
                a.address == prefsrc for addrs in self._addrs.values() for a in addrs):
            return prefsrc
        for addr in self._addrs.get(route.oif or 0, []):
            if addr.family == route.family and not addr.address.is_link_local:
                return addr.address
        return None

    def _link_unusable(self, link: LinkInfo | None) -> DownReason | None:
        if link is None:
            return DownReason.LINK_REMOVED
        if not self._name_allowed(link.name):
            return DownReason.FILTERED
        if not link.up:
            return DownReason.LINK_DOWN
        if not link.carrier:
            return DownReason.CARRIER_LOST
        return None

    def _candidates(self) -> tuple[dict[_Key, WanLink], dict[_Key, DownReason]]:
        """The WANs the current snapshots describe, and why the others are not."""
        found: dict[_Key, WanLink] = {}
        why: dict[_Key, DownReason] = {}
        # Lowest table first so an interface in two tables maps to one stable choice.
        for route in sorted(self._routes.values(),
                            key=lambda r: (r.table, r.family, r.oif or 0, r.gateway or "")):
            if route.oif is None:  # never stored (see _is_default); narrows the type
                continue
            key = (route.oif, route.family)
            if key in found:
                continue
            link = self._links.get(route.oif)
            reason = self._link_unusable(link)
            address = self._address_for(route) if reason is None else None
            if link is None or address is None:
                why.setdefault(key, reason or DownReason.ADDRESS_REMOVED)
                continue
            found[key] = WanLink(name=link.name, index=link.index, address=address,
                                 table=route.table, family=route.family)
            why.pop(key, None)
        return found, why

    def _down_reason(self, key: _Key, why: dict[_Key, DownReason]) -> DownReason:
        if key in why:
            return why[key]
        return self._link_unusable(self._links.get(key[0])) or DownReason.ROUTE_REMOVED

    def _holddown(self, key: _Key, now: float) -> float:
        penalty, last = self._flaps.get(key, (0, now))
        if now - last >= self._flap_decay:
            penalty = 0
        # The first flap costs only the debounce; every further one doubles the hold-down.
        return min(self._debounce * 2.0 ** min(max(penalty - 1, 0), 30), self._max_holddown)

    def _record_flap(self, key: _Key, now: float) -> None:
        penalty, last = self._flaps.get(key, (0, now))
        if now - last >= self._flap_decay:
            penalty = 0
        self._flaps[key] = (penalty + 1, now)

    def _update(self, now: float, *, immediate: bool = False) -> None:
        found, why = self._candidates()
        # Down first, immediately: a WAN that is gone must not carry another packet.
        for key, wan in list(self._active.items()):
            new = found.get(key)
            if new is None or new.name != wan.name or new.table != wan.table:
                del self._active[key]
                reason = DownReason.FILTERED if new is not None else self._down_reason(key, why)
                self._events.append(WanRemoved(wan, reason))
                if new is None:
                    self._record_flap(key, now)
            elif new.address != wan.address:
                self._active[key] = new
                self._events.append(WanAddressChanged(wan, new))
        for key in [k for k in self._pending if k not in found]:
            del self._pending[key]
            self._record_flap(key, now)
        # Up, after the hold-down (or at once on the start-up scan).
        for key, wan in sorted(found.items()):
            if key in self._active:
                continue
            due = self._pending.get(key)
            if due is None:
                due = now if immediate else now + self._holddown(key, now)
                self._pending[key] = due
            if due <= now:
                del self._pending[key]
                self._active[key] = wan
                self._events.append(WanAdded(wan))


def family_name(family: int) -> str:
    """``"ipv4"``/``"ipv6"`` for logs."""
    names: dict[int, str] = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6"}
    return names.get(family, str(family))
