"""rtnetlink I/O: requests, dumps and the WAN event monitor.

pyroute2 encodes and decodes every message; the sockets are plain ``AF_NETLINK`` sockets
owned here.  The reason: pyroute2 0.9's synchronous ``IPRoute`` drives a private asyncio
loop with ``run_until_complete`` and raises ``RuntimeError`` when called from a callback of
an already running loop -- exactly where the runtime sits.  Requests here are answered by
the kernel synchronously (sub-millisecond), so a blocking request socket with a timeout is
safe to use inside the event loop; the event socket is non-blocking and drained until
``EAGAIN`` from ``loop.add_reader``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import socket
from collections.abc import Callable, Iterator
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ratbond.linux.wan import AddrInfo, LinkInfo, RouteInfo, WanTable

__all__ = [
    "NetlinkRequestError",
    "Rtnl",
    "WanMonitor",
    "WanMonitorError",
    "addr_from_msg",
    "link_from_msg",
    "routes_from_msg",
]

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_NODAD = 0x02
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_NOWHERE = 255
RTPROT_UNSPEC = 0
RTPROT_STATIC = 4
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # needs CAP_NET_ADMIN
RECV_SIZE = 1 << 16  # the kernel never builds a netlink skb larger than 32 KiB for us
WAN_GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
              | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)

Message = Any  # a decoded pyroute2 nlmsg (untyped library)


class NetlinkRequestError(OSError):
    """The kernel refused a request; ``errno`` is the kernel's error code."""


class WanMonitorError(RuntimeError):
    """The monitor was used out of order (not open, or opened twice)."""


# -- pyroute2 messages -> plain snapshots -------------------------------------------------


def link_from_msg(msg: Message) -> LinkInfo:
    flags = int(msg["flags"])
    return LinkInfo(index=int(msg["index"]), name=str(msg.get_attr("IFLA_IFNAME") or ""),
                    up=bool(flags & IFF_UP), carrier=bool(flags & IFF_LOWER_UP))


def addr_from_msg(msg: Message) -> tuple[AddrInfo, bool] | None:
    """The address and whether it is usable now (not tentative, DAD not failed)."""
    family = int(msg["family"])
    text = msg.get_attr("IFA_LOCAL") if family == socket.AF_INET else None
    text = text or msg.get_attr("IFA_ADDRESS")
    if family not in (socket.AF_INET, socket.AF_INET6) or not text:
        return None
    flags = msg.get_attr("IFA_FLAGS")
    flags = int(msg["flags"]) if flags is None else int(flags)
    info = AddrInfo(index=int(msg["index"]), address=ipaddress.ip_address(text),
                    prefixlen=int(msg["prefixlen"]), family=family)
    return info, not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def routes_from_msg(msg: Message) -> list[RouteInfo]:
    """Unicast routes in a message; a multipath route gives one per next hop."""
    family = int(msg["family"])
    if family not in (socket.AF_INET, socket.AF_INET6) or int(msg["type"]) != RTN_UNICAST:
        return []
    table = msg.get_attr("RTA_TABLE")
    table = int(msg["table"]) if table is None else int(table)
    prefsrc = msg.get_attr("RTA_PREFSRC")
    hops: list[tuple[int | None, str | None]] = [(msg.get_attr("RTA_OIF"),
                                                  msg.get_attr("RTA_GATEWAY"))]
    multipath = msg.get_attr("RTA_MULTIPATH")
    if multipath:
        hops = [(hop.get("oif"), hop.get_attr("RTA_GATEWAY")) for hop in multipath]
    return [RouteInfo(table=table, dst_len=int(msg["dst_len"]),
                      oif=None if oif is None else int(oif), gateway=gateway,
                      prefsrc=prefsrc, family=family) for oif, gateway in hops]


# -- requests -----------------------------------------------------------------------------


class Rtnl:
    """A blocking rtnetlink request socket: dumps and acknowledged changes.

    Safe inside a running event loop (no pyroute2 event loop involved); the kernel answers
    at once, ``timeout`` only guards against a wedged kernel.
    """

    def __init__(self, *, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(timeout)
        self._marshal = MarshalRtnl()
        self._seq = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exchange(self, msg: Message, msg_type: int, flags: int) -> Iterator[Message]:
        seq = next(self._seq)
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self._sock.send(msg.data)
        while True:
            data = self._sock.recv(RECV_SIZE)
            for reply in self._marshal.parse(data):
                if reply["header"]["sequence_number"] != seq:
                    continue  # a late answer to an earlier, timed-out request
                kind = reply["header"]["type"]
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -int(reply["error"])
                    if code:
                        raise NetlinkRequestError(code, f"netlink: {errno.errorcode.get(code)}")
                    return  # the ACK
                yield reply

    def dump(self, msg: Message, msg_type: int) -> list[Message]:
        return list(self._exchange(msg, msg_type, NLM_F_DUMP))

    def request(self, msg: Message, msg_type: int, flags: int = 0) -> None:
        for _ in self._exchange(msg, msg_type, NLM_F_ACK | flags):
            pass

    # The few operations ratbond needs, by name.

    def links(self) -> list[LinkInfo]:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        return [link_from_msg(m) for m in self.dump(msg, RTM_GETLINK)
                if m["header"]["type"] == RTM_NEWLINK]

    def addresses(self) -> list[AddrInfo]:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_UNSPEC
        found = (addr_from_msg(m) for m in self.dump(msg, RTM_GETADDR))
        return [info for info, usable in filter(None, found) if usable]

    def routes(self) -> list[RouteInfo]:
        out: list[RouteInfo] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            msg = rtmsg()
            msg["family"] = family
            for m in self.dump(msg, RTM_GETROUTE):
                out.extend(routes_from_msg(m))
        return out

    def link_index(self, name: str) -> int:
        return socket.if_nametoindex(name)

    def set_link(self, index: int, *, up: bool | None = None, mtu: int | None = None) -> None:
        msg = ifinfmsg()
        msg["family"] = socket.AF_UNSPEC
        msg["index"] = index
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        if mtu is not None:
            msg["attrs"] = [("IFLA_MTU", mtu)]
        self.request(msg, RTM_NEWLINK)

    def add_address(self, index: int,
                    iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        """Assign ``iface`` (idempotent); IPv6 skips DAD so sockets can bind at once."""
        msg = ifaddrmsg()
        msg["index"] = index
        msg["prefixlen"] = iface.network.prefixlen
        ip = str(iface.ip)
        if iface.version == 4:
            msg["family"] = socket.AF_INET
            msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
        else:
            msg["family"] = socket.AF_INET6
            msg["flags"] = IFA_F_NODAD
            msg["attrs"] = [("IFA_ADDRESS", ip), ("IFA_FLAGS", IFA_F_NODAD)]
        self.request(msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)

    def default_route(self, command: str, *, oif: int, gateway: str, table: int,
                      metric: int | None = None) -> None:
        """``command`` is ``"add"`` (fails with EEXIST if present) or ``"del"``."""
        self.gateway_route(command, dst=None, dst_len=0, oif=oif, gateway=gateway, table=table,
                           metric=metric)

    def gateway_route(self, command: str, *, dst: str | None, dst_len: int, oif: int,
                      gateway: str, table: int, metric: int | None = None) -> None:
        """Add (``"add"``, EEXIST if present) or delete (``"del"``) ``dst/dst_len`` via
        ``gateway`` out of ``oif``; ``dst=None`` with ``dst_len=0`` is the default route."""
        family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
        msg = rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst_len
        msg["table"] = table if table < 256 else 252
        msg["type"] = RTN_UNICAST
        # Delete matches any protocol and scope (as ``ip route del`` does); gateway, device,
        # table and metric pin the route down.
        msg["proto"] = RTPROT_STATIC if command == "add" else RTPROT_UNSPEC
        msg["scope"] = RT_SCOPE_UNIVERSE if command == "add" else RT_SCOPE_NOWHERE
        attrs: list[tuple[str, object]] = [("RTA_TABLE", table), ("RTA_OIF", oif),
                                           ("RTA_GATEWAY", gateway)]
        if dst is not None:
            attrs.append(("RTA_DST", dst))
        if metric is not None:
            attrs.append(("RTA_PRIORITY", metric))
        msg["attrs"] = attrs
        if command == "add":
            self.request(msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)
        elif command == "del":
            self.request(msg, RTM_DELROUTE)
        else:
            raise ValueError(f"unknown route command {command!r}")


# -- events -------------------------------------------------------------------------------


class WanMonitor:
    """Feeds a :class:`WanTable` from rtnetlink: one full scan, then events.

    The caller registers :meth:`fileno` with its loop, calls :meth:`drain` when readable
    and :meth:`rescan` every 15 s (a safety net for anything the kernel did not tell us).
    """

    def __init__(self, table: WanTable, *, rtnl_factory: Callable[[], Rtnl] = Rtnl,
                 rcvbuf: int = 4 << 20) -> None:
        self.table = table
        self._rtnl_factory = rtnl_factory
        self._rcvbuf = rcvbuf
        self._events: socket.socket | None = None
        self._marshal = MarshalRtnl()
        self._link_state: dict[int, tuple[bool, bool]] = {}  # index -> (up, carrier)
        self.overruns = 0  # ENOBUFS seen: events were lost, a rescan repaired it
        self.rescans = 0
        self.messages = 0

    def open(self) -> None:
        """Subscribe first, so nothing between subscription and the first scan is lost."""
        if self._events is not None:
            raise WanMonitorError("WanMonitor already open")
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            # A burst of events must not overflow the queue: force a big one when allowed.
            for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, self._rcvbuf)
                    break
            sock.bind((0, WAN_GROUPS))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._events = sock

    def fileno(self) -> int:
        if self._events is None:
            raise WanMonitorError("WanMonitor is not open")
        return self._events.fileno()

    def rescan(self, now: float) -> None:
        """Dump links, addresses and routes (IPv4 and IPv6, all tables) into the table."""
        with self._rtnl_factory() as rtnl:
            links, addrs, routes = rtnl.links(), rtnl.addresses(), rtnl.routes()
        self._link_state = {link.index: (link.up, link.carrier) for link in links}
        self.rescans += 1
        self.table.replace_all(links, addrs, routes, now)

    def drain(self, now: float) -> None:
        """Apply every pending event; an overrun (events lost) triggers a rescan."""
        if self._events is None:
            raise WanMonitorError("WanMonitor is not open")
        # The kernel flushes IPv4 routes without telling anyone when their device goes
        # admin down or their source address is deleted; such changes end with a rescan.
        lost = resync = False
        recv = self._events.recv
        while True:
            try:
                data = recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True
                continue
            for msg in self._marshal.parse(data):
                self.messages += 1
                resync = self._apply(msg, now) or resync
        if lost:
            self.overruns += 1
        if lost or resync:
            self.rescan(now)

    def _apply(self, msg: Message, now: float) -> bool:
        """Feed one message to the table; True when the kernel may have flushed routes."""
        kind = msg["header"]["type"]
        table = self.table
        if kind == RTM_NEWLINK:
            link = link_from_msg(msg)
            state = (link.up, link.carrier)
            changed = self._link_state.get(link.index) != state
            self._link_state[link.index] = state
            table.link_changed(link, now)
            return changed
        if kind == RTM_DELLINK:
            self._link_state.pop(int(msg["index"]), None)
            table.link_removed(int(msg["index"]), now)
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            found = addr_from_msg(msg)
            if found is not None:
                info, usable = found
                if kind == RTM_NEWADDR and usable:
                    table.addr_added(info, now)
                else:
                    table.addr_removed(info, now)
                    return kind == RTM_DELADDR and info.family == socket.AF_INET
        elif kind == RTM_NEWROUTE:
            for route in routes_from_msg(msg):
                table.route_added(route, now)
        elif kind == RTM_DELROUTE:
            for route in routes_from_msg(msg):
                table.route_removed(route, now)
        return False

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
