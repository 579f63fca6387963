"""The client's route into the tunnel.

While at least one path is up, the client's traffic leaves through the TUN: a default route
via the server's tunnel address, in the main table unless told otherwise.  When that table
already has somebody else's default route (a router whose ISP default was left in main),
ratbond never replaces or hides it: it installs two half-space routes instead (``0.0.0.0/1``
and ``128.0.0.0/1``, ``::/1`` and ``8000::/1`` for IPv6), which are more specific than any
default and so win without touching it; the existing default is used again as soon as the
tunnel is down and ratbond removes its routes.  :attr:`DefaultRouteManager.present` is
true only while the kernel holds what we installed, so status never reports a route that
is not there.

The client's own path sockets never follow these routes, for two independent reasons:

* each is bound to its WAN device (``SO_BINDTODEVICE``), which restricts the kernel's route
  lookup to routes out of that device -- a route via the TUN cannot match;
* each is bound to its WAN's address, and the ``ip rule from <wan-ip> lookup <table>`` rules
  send such packets to the WAN's own table, consulted before main.
"""

from __future__ import annotations

import errno
from typing import Final, Literal

from ratbond.linux.netlink import NetlinkRequestError, Rtnl

MAIN_TABLE = 254

RouteMode = Literal["default", "split"]

#: The two halves of the address space, per family: (destination, prefix length).
_SPLIT: Final = {
    4: (("0.0.0.0", 1), ("128.0.0.0", 1)),
    6: (("::", 1), ("8000::", 1)),
}
_GONE: Final = (errno.ESRCH, errno.ENODEV, errno.ENOENT)


class RouteConflictError(RuntimeError):
    """A route ratbond must install exists already with another next hop."""


class DefaultRouteManager:
    """Adds and removes the route(s) into the tunnel; both operations are idempotent."""

    def __init__(self, ipr: Rtnl, *, device: str, gateway: str, table: int = MAIN_TABLE,
                 metric: int | None = None) -> None:
        self._rtnl = ipr
        self.device = device
        self.gateway = gateway
        self.table = table
        self.metric = metric
        self.present = False  # true while the kernel holds the route(s) we installed
        self.mode: RouteMode | None = None

    def ensure_present(self) -> RouteMode:
        """Install the default route, or the two half routes when another default is there
        (see the module docstring); returns which.  An identical route counts as ours."""
        if self.present and self.mode is not None:
            return self.mode
        oif = self._rtnl.link_index(self.device)
        try:
            self._add(None, 0, oif)
            mode: RouteMode = "default"
        except RouteConflictError:
            for dst, dst_len in _SPLIT[6 if ":" in self.gateway else 4]:
                self._add(dst, dst_len, oif)
            mode = "split"
        self.present = True
        self.mode = mode
        return mode

    def ensure_absent(self) -> None:
        """Remove what we installed (gone with its device counts as removed)."""
        try:
            oif = self._rtnl.link_index(self.device)
        except OSError:
            self.present = False  # the device is gone, and its routes with it
            self.mode = None
            return
        targets: list[tuple[str | None, int]] = [(None, 0)]
        if self.mode == "split":
            targets = list(_SPLIT[6 if ":" in self.gateway else 4])
        for dst, dst_len in targets:
            try:
                self._rtnl.gateway_route("del", dst=dst, dst_len=dst_len, oif=oif,
                                         gateway=self.gateway, table=self.table,
                                         metric=self.metric)
            except NetlinkRequestError as exc:
                if exc.errno not in _GONE:
                    raise
        self.present = False
        self.mode = None

    def _add(self, dst: str | None, dst_len: int, oif: int) -> None:
        try:
            self._rtnl.gateway_route("add", dst=dst, dst_len=dst_len, oif=oif,
                                     gateway=self.gateway, table=self.table, metric=self.metric)
        except NetlinkRequestError as exc:
            if exc.errno != errno.EEXIST:
                raise
            if not self._ours_exists(dst_len, oif):
                raise RouteConflictError(
                    f"another route to {dst or 'default'}/{dst_len} exists in table "
                    f"{self.table}") from exc

    def _ours_exists(self, dst_len: int, oif: int) -> bool:
        # The dump does not carry destinations here; a same-length route out of our device
        # via our gateway in our table is ours (nothing else installs routes via the TUN).
        return any(r.table == self.table and r.dst_len == dst_len and r.oif == oif
                   and r.gateway == self.gateway for r in self._rtnl.routes())
