"""The client's default route into the tunnel.

While at least one path is up, the client's traffic leaves through the TUN: a default route
via the server's tunnel address, in the main table unless told otherwise.  The client's own
path sockets never follow it, for two independent reasons:

* each is bound to its WAN device (``SO_BINDTODEVICE``), which restricts the kernel's route
  lookup to routes out of that device -- a route via the TUN cannot match;
* each is bound to its WAN's address, and the ``ip rule from <wan-ip> lookup <table>`` rules
  send such packets to the WAN's own table, consulted before main.

So adding and removing this route never disturbs the paths that carry the tunnel.
"""

from __future__ import annotations

import errno

from ratbond.linux.netlink import NetlinkRequestError, Rtnl

MAIN_TABLE = 254


class RouteConflictError(RuntimeError):
    """Another default route with the same table and metric is in the way."""


class DefaultRouteManager:
    """Adds and removes one default route; both operations are idempotent."""

    def __init__(self, ipr: Rtnl, *, device: str, gateway: str, table: int = MAIN_TABLE,
                 metric: int | None = None) -> None:
        self._rtnl = ipr
        self.device = device
        self.gateway = gateway
        self.table = table
        self.metric = metric
        self.present = False  # what we believe after our last successful call

    def ensure_present(self) -> None:
        """Install the route; an identical one already there counts as installed.

        Never replaces someone else's default route: that raises :class:`RouteConflictError`.
        """
        oif = self._rtnl.link_index(self.device)
        try:
            self._rtnl.default_route("add", oif=oif, gateway=self.gateway, table=self.table,
                                     metric=self.metric)
        except NetlinkRequestError as exc:
            if exc.errno != errno.EEXIST:
                raise
            if not self._ours_exists(oif):
                raise RouteConflictError(
                    f"a different default route exists in table {self.table}"
                    f" (metric {self.metric}); not replacing it") from exc
        self.present = True

    def ensure_absent(self) -> None:
        """Remove the route if it is there (gone with its device counts as removed)."""
        try:
            oif = self._rtnl.link_index(self.device)
        except OSError:
            self.present = False  # the device is gone, and its routes with it
            return
        try:
            self._rtnl.default_route("del", oif=oif, gateway=self.gateway, table=self.table,
                                     metric=self.metric)
        except NetlinkRequestError as exc:
            if exc.errno not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
                raise
        self.present = False

    def _ours_exists(self, oif: int) -> bool:
        return any(r.table == self.table and r.dst_len == 0 and r.oif == oif
                   and r.gateway == self.gateway for r in self._rtnl.routes())
