"""The client's shell: WAN sockets, the TUN, netlink and DNS around a ClientConnection.

Everything that decides anything lives in :class:`~ratbond.connection.ClientConnection`;
this module only moves bytes and applies events.  Data path: TUN -> connection -> one UDP
socket per WAN x mux, bound to the WAN's address *and* device so it can never be routed
into the tunnel.  Back: socket -> connection -> TUN.  Every fd is drained until EAGAIN in
one callback and the connection is flushed once per batch (docs/design.md).

WAN links come from netlink (:class:`~ratbond.linux.wan.WanTable`): each gets ``--mux``
sockets and path ids that stay the same while the process lives, so a WAN that returns
(or gets a new address) keeps its path ids and the server follows it.  The server's name
is resolved off the loop and re-resolved with back-off while it does not resolve (routers
boot before DNS works).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import asdict, dataclass, field

from ratbond import __version__, deploy_hooks
from ratbond.bond import LinkRate
from ratbond.bond.stats import BOND_COUNTERS
from ratbond.config import TUN_MTU, ClientSettings
from ratbond.connection import (
    Address,
    ClientConnection,
    ConnectionEvent,
    HandshakeFailed,
    HandshakeStarted,
    KeysRotated,
    PathDown,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelDown,
    TunnelUp,
)
from ratbond.connection.client import REASON_SILENCE
from ratbond.linux.netlink import Rtnl, WanMonitor
from ratbond.linux.policy import PolicyRouting
from ratbond.linux.policy_keeper import PolicyKeeper
from ratbond.linux.routes import DefaultRouteManager, RouteConflictError
from ratbond.linux.sockets import drain_datagrams, open_path_socket
from ratbond.linux.tun import TunDevice
from ratbond.linux.wan import WanAdded, WanAddressChanged, WanLink, WanRemoved, WanTable
from ratbond.logs import TRACE, setup_logging
from ratbond.mqtt.publisher import start_publisher
from ratbond.runtime.common import (
    BATCH,
    channel_summary,
    connection_config,
    path_rows,
    stable_client_id,
    status_token,
    warn_if_plaintext,
)
from ratbond.runtime.loop import run_until_signalled
from ratbond.runtime.shell import Shell
from ratbond.status import StatusServer

log = logging.getLogger("ratbond.client")

#: Re-resolution of a server name that does not resolve: first retry, and the cap (s).
RESOLVE_RETRY_FIRST = 1.0
RESOLVE_RETRY_MAX = 30.0
#: --manage-policy-routing waits this long after a netlink event before it re-plans, so a
#: DHCP renewal (address, then routes) is one change, not several (s).
POLICY_SETTLE = 0.2

NO_WAN_MESSAGE = ("no WAN: no interface has a default route in a routing table other than "
                  "main (254); give each WAN link its own table and an 'ip rule from "
                  "<wan-ip> lookup <table>' (README: 'Deploying the client')")


@dataclass
class ClientPath:
    """One path: a WAN link (x mux index) and the socket bound to it."""

    path_id: int
    wan: WanLink
    mux_index: int
    sock: socket.socket
    server: Address
    tx_errors: int = 0


@dataclass
class _Wan:
    link: WanLink
    path_ids: list[int] = field(default_factory=list)


@dataclass
class _GonePath:
    """A path whose WAN left: still listed (state down, why, since when)."""

    wan: str
    local: str
    reason: str
    since: float


class ClientRuntime(Shell[ClientConnection]):
    """Owns every fd of one client process and the connection between them."""


    def __init__(self, settings: ClientSettings, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        connection = ClientConnection(connection_config(settings), now=now,
                                      wall_offset=time.time() - now,
                                      client_id=stable_client_id(settings.tunnel_id))
        super().__init__(loop, connection, log)
        self.settings = settings
        self.rtnl: Rtnl | None = None
        self.routes: list[DefaultRouteManager] = []
        self.wan_table = WanTable(include=settings.included_wans,
                                  exclude=settings.exclude_wans,
                                  ignore_devices=[settings.client_tun_name])
        self.monitor = WanMonitor(self.wan_table)
        self.wans: dict[str, _Wan] = {}
        self.paths: dict[int, ClientPath] = {}
        self._gone: dict[int, _GonePath] = {}
        self._path_ids: dict[tuple[str, int], int] = {}
        self._next_rescan = now + settings.rescan_interval
        self._servers: dict[int, Address] = {}  # address family -> the server's address
        self._resolve_at: float | None = None
        self._resolve_backoff = RESOLVE_RETRY_FIRST
        self._resolve_failing_since: float | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._no_wan_warned = False
        self.keeper: PolicyKeeper | None = None
        self._policy_due: float | None = None
        self.status = StatusServer(self.snapshot, token=status_token(settings))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        now = self._now()
        self.tun = TunDevice.open(s.client_tun_name, mtu=TUN_MTU)
        self.tun.configure(address=s.client_tunnel_address, address6=s.client_tunnel_address6)
        log.info("tunnel %s up with %s; server %s", self.tun.name, s.client_tunnel_address,
                 s.connect)
        self.rtnl = Rtnl()
        if s.manage_policy_routing:
            self.keeper = PolicyKeeper(PolicyRouting(self.rtnl), include=s.included_wans,
                                       exclude=s.exclude_wans, ignore=[self.tun.name],
                                       table_base=s.policy_table_base, pref=s.policy_pref)
            result = self.keeper.sync()  # before the sysctl check and the first scan
            log.info("policy routing managed: %s", ", ".join(
                f"{name} table {table}" for name, table in sorted(result.tables.items()))
                or "no WAN yet (no interface has a default route in main)")
        self.deployment = deploy_hooks.client_started(s)  # sysctls, systemd readiness
        gateways = [s.server_tunnel_address, s.server_tunnel_address6]
        self.routes = [DefaultRouteManager(self.rtnl, device=self.tun.name, gateway=str(g.ip))
                       for g in gateways if g is not None]
        if s.http_listen is not None:
            await self.status.start(s.http_listen.host, s.http_listen.port)
        await self._resolve_server()
        self.monitor.open()
        self.loop.add_reader(self.monitor.fileno(), self._on_netlink)
        self.monitor.rescan(now)
        self._handle_wan_events(now)
        self._check_wans()
        self.connection.connect(now)
        self._after_work(now)
        self.mqtt = start_publisher(s.mqtt, "client", self.status, self.loop)

    async def stop(self) -> None:
        self._stop_mqtt()
        now = self._now()
        if self._resolving is not None:
            self._resolving.cancel()
        self.connection.close(now)
        self._send_datagrams(now)
        self._timer.cancel()
        await self.status.close()
        for path_id in list(self.paths):
            self._close_path(path_id)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.monitor.fileno())
        self.monitor.close()
        for manager in self.routes:
            with contextlib.suppress(OSError):
                manager.ensure_absent()
        if self.keeper is not None:
            try:
                removed = self.keeper.remove_added()
                log.info("policy routing: removed the %d rule(s) and route(s) it added",
                         len(removed))
            except OSError as exc:
                log.warning("policy routing: could not remove what it added (%s); run "
                            "'ratbond policy-routing remove'", exc.strerror or exc)
        if self.rtnl is not None:
            self.rtnl.close()
        deploy_hooks.stopping(self.deployment)
        self._close_tun()
        log.info("stopped")

    # -- fd callbacks ---------------------------------------------------------------------

    def _on_path_readable(self, path: ClientPath) -> None:
        now = self._now()
        receive = self.connection.receive_datagram
        datagrams = drain_datagrams(path.sock, BATCH)
        for data, _addr in datagrams:
            receive(data, now)
        self.counters.rx_datagrams += len(datagrams)
        if self._trace:
            log.log(TRACE, "path %d: %d datagrams", path.path_id, len(datagrams))
        self._after_work(now)

    def _on_netlink(self) -> None:
        now = self._now()
        self.monitor.drain(now)
        if self.keeper is not None and self._policy_due is None:
            self._policy_due = now + POLICY_SETTLE
        self._handle_wan_events(now)
        self._after_work(now)

    def _shell_timer(self) -> float | None:
        deadlines = [self._next_rescan, self.wan_table.get_timer(), self._resolve_at,
                     self._policy_due]
        return min((d for d in deadlines if d is not None), default=None)

    def _shell_timer_work(self, now: float) -> None:
        self.wan_table.handle_timer(now)
        if self._policy_due is not None and now >= self._policy_due:
            self._policy_due = None
            self._keep_policy_routing()
        if now >= self._next_rescan:
            if self.keeper is not None:
                self._keep_policy_routing()
            self.monitor.rescan(now)
            self._next_rescan = now + self.settings.rescan_interval
        self._handle_wan_events(now)
        self._check_wans()
        if self._resolve_at is not None and now >= self._resolve_at and self._resolving is None:
            self._resolve_at = None
            self._resolving = self.loop.create_task(self._resolve_server())

    def _send_datagrams(self, now: float) -> None:
        paths = self.paths
        for path_id, datagram in self.connection.datagrams_to_send(now):
            path = paths.get(path_id)
            if path is None:
                self.counters.tx_no_socket += 1
                continue
            try:
                path.sock.sendto(datagram, path.server)
            except BlockingIOError:
                self.counters.tx_socket_full += 1
            except OSError as exc:
                path.tx_errors += 1
                self.ratelog.log(logging.DEBUG, f"tx{path_id}", "path %d (%s): send failed: %s",
                                 path_id, path.wan.name, exc.strerror)

    # -- events ---------------------------------------------------------------------------

    def _on_event(self, event: ConnectionEvent) -> None:
        if isinstance(event, PathUp):
            path = self.paths.get(event.path_id)
            log.info("path %d up (%s)", event.path_id, path.wan.name if path else "?")
        elif isinstance(event, PathDown):
            log.info("path %d down: %s", event.path_id, event.reason)
        elif isinstance(event, TunnelUp | TunnelDown):
            self._set_default_route(isinstance(event, TunnelUp))
        else:
            self._log_session_event(event)

    def _log_session_event(self, event: ConnectionEvent) -> None:
        if isinstance(event, SessionStarted):
            log.info("session %08x established with %s", event.session, self.settings.connect)
        elif isinstance(event, SessionEnded):
            log.info("session %08x ended: %s", event.session, event.reason)
        elif isinstance(event, HandshakeStarted):
            if event.reason == REASON_SILENCE:
                self.ratelog.log(logging.INFO, "silent", "nothing heard from the server for "
                                 "%.1f s: new handshake", self.connection.config.silence_limit)
            log.debug("handshake attempt %d (%s)", event.attempt, event.reason)
        elif isinstance(event, HandshakeFailed):
            self.ratelog.log(logging.WARNING, "hsfail", "handshake failed: %s", event.reason)
        elif isinstance(event, KeysRotated):
            log.debug("session %08x: keys rotated", event.session)

    def _set_default_route(self, present: bool) -> None:
        """The default route into the tunnel exists exactly while some path is up; what
        the status says is what the kernel accepted."""
        for manager in self.routes:
            try:
                if present:
                    mode = manager.ensure_present()
                    if mode == "split":
                        log.warning("table main already has a default route; routing all "
                                    "traffic into the tunnel with two /1 routes via %s instead "
                                    "(the existing default stays for when the tunnel is down)",
                                    manager.gateway)
                else:
                    manager.ensure_absent()
            except (RouteConflictError, OSError) as exc:
                self.ratelog.log(logging.WARNING, f"route{manager.gateway}",
                                 "route via %s %s failed: %s", manager.gateway,
                                 "add" if present else "removal", exc)
        installed = any(manager.present for manager in self.routes)
        log.info("route via the tunnel %s", "added" if installed else "removed")

    def _keep_policy_routing(self) -> None:
        """Re-plan the per-WAN tables; the netlink events the changes cause reach the WAN
        table like any other.  A refusal is retried at the next event or rescan."""
        if self.keeper is None:
            return
        try:
            self.keeper.sync()
        except OSError as exc:
            self.ratelog.log(logging.WARNING, "policy", "policy routing: the kernel refused a "
                             "change (%s); retrying at the next change or rescan",
                             exc.strerror or exc)

    # -- the server's address -------------------------------------------------------------

    async def _resolve_server(self) -> None:
        """Resolve ``--connect-addr`` off the loop; on failure retry with back-off."""
        target = self.settings.connect
        now = self._now()
        try:
            infos = await self.loop.getaddrinfo(target.host, target.port,
                                                type=socket.SOCK_DGRAM)
        except OSError as exc:
            if self._resolve_failing_since is None:
                self._resolve_failing_since = now
                log.warning("cannot resolve the server %s (%s); retrying with back-off up to "
                            "every %.0f s", target, exc.strerror or exc, RESOLVE_RETRY_MAX)
            self._resolve_at = now + self._resolve_backoff
            self._resolve_backoff = min(2 * self._resolve_backoff, RESOLVE_RETRY_MAX)
            return
        finally:
            self._resolving = None
        servers: dict[int, Address] = {}
        for family, _type, _proto, _name, sockaddr in infos:
            servers.setdefault(int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if self._resolve_failing_since is not None:
            log.info("the server %s resolves now (%s), after %.0f s", target,
                     ", ".join(a[0] for a in servers.values()),
                     now - self._resolve_failing_since)
        self._resolve_failing_since = None
        self._resolve_backoff = RESOLVE_RETRY_FIRST
        self._servers = servers
        for wan in list(self.wans.values()):
            if not wan.path_ids:
                self._open_paths(wan, now)
        self._after_work(now)

    # -- WAN links ------------------------------------------------------------------------

    def _handle_wan_events(self, now: float) -> None:
        while (event := self.wan_table.next_event()) is not None:
            if isinstance(event, WanAdded):
                self._wan_added(event.wan, now)
            elif isinstance(event, WanRemoved):
                self._wan_removed(event.wan, str(event.reason.value), now)
            elif isinstance(event, WanAddressChanged):
                self._wan_readdressed(event.old, event.new, now)

    def _check_wans(self) -> None:
        """Say it once when no WAN is left, and once when one is back."""
        if not self.wans and not self._no_wan_warned:
            self._no_wan_warned = True
            log.warning("%s", NO_WAN_MESSAGE)
        elif self.wans and self._no_wan_warned:
            self._no_wan_warned = False
            log.info("WAN links found: %s", ", ".join(sorted(self.wans)))

    def _wan_added(self, link: WanLink, now: float) -> None:
        wan = _Wan(link)
        self.wans[link.name] = wan
        self._open_paths(wan, now)

    def _open_paths(self, wan: _Wan, now: float) -> None:
        link = wan.link
        server = self._servers.get(link.family)
        if server is None:
            if self._servers:
                self.ratelog.log(logging.WARNING, f"nofam{link.name}",
                                 "WAN %s: the server %s has no address of its family",
                                 link.name, self.settings.connect)
            return  # no address yet: paths open when the name resolves
        backup = self.settings.is_backup_wan(link.name)
        rate = self.settings.link_rate_for(link.name)
        rate_hint = (None if rate is None else
                     LinkRate(send_bps=rate.up_mbps * 1e6 / self.settings.mux,
                              receive_bps=rate.down_mbps * 1e6 / self.settings.mux))
        for mux_index in range(self.settings.mux):
            key = (link.name, mux_index)
            path_id = self._path_ids.setdefault(key, len(self._path_ids) + 1)
            try:
                sock = open_path_socket(link.address, link.name)
            except OSError as exc:
                self.ratelog.log(logging.WARNING, f"bind{link.name}",
                                 "WAN %s: cannot bind %s: %s", link.name, link.address,
                                 exc.strerror)
                continue
            path = ClientPath(path_id, link, mux_index, sock, server)
            self.paths[path_id] = path
            self._gone.pop(path_id, None)
            wan.path_ids.append(path_id)
            self.loop.add_reader(sock.fileno(), self._on_path_readable, path)
            self.connection.add_path(path_id, now, backup=backup, rate_hint=rate_hint)
        log.info("WAN %s joined (%s, table %d%s): paths %s", link.name, link.address,
                 link.table, ", backup" if backup else "", wan.path_ids)

    def _wan_removed(self, link: WanLink, reason: str, now: float) -> None:
        wan = self.wans.pop(link.name, None)
        if wan is None:
            return
        log.info("WAN %s left: %s", link.name, reason)
        for path_id in wan.path_ids:
            self.connection.remove_path(path_id, now, f"{link.name} {reason}")
            self._gone[path_id] = _GonePath(link.name, str(link.address), f"{link.name} {reason}",
                                            now)
            self._close_path(path_id)

    def _wan_readdressed(self, old: WanLink, new: WanLink, now: float) -> None:
        """A new lease: rebind the sockets, keep the path ids (the server follows)."""
        wan = self.wans.get(old.name)
        if wan is None:
            self._wan_added(new, now)
            return
        log.info("WAN %s moved from %s to %s; rebinding", old.name, old.address, new.address)
        wan.link = new
        if not wan.path_ids:
            self._open_paths(wan, now)
            return
        for path_id in wan.path_ids:
            path = self.paths.get(path_id)
            if path is None:
                continue
            try:
                sock = open_path_socket(new.address, new.name)
            except OSError as exc:
                log.warning("WAN %s: cannot bind %s: %s", new.name, new.address, exc.strerror)
                continue
            self.loop.remove_reader(path.sock.fileno())
            path.sock.close()
            path.sock, path.wan = sock, new
            self.loop.add_reader(sock.fileno(), self._on_path_readable, path)

    def _close_path(self, path_id: int) -> None:
        path = self.paths.pop(path_id, None)
        if path is None:
            return
        with contextlib.suppress(Exception):
            self.loop.remove_reader(path.sock.fileno())
        path.sock.close()

    # -- status ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        now = self._now()
        conn = self.connection
        snap = conn.bond_snapshot(now)
        rows = path_rows(snap)
        for row in rows:
            path = self.paths.get(int(str(row["path_id"])))
            if path is not None:
                row["wan"] = path.wan.name
                row["local"] = str(path.wan.address)
                row["tx_errors"] = path.tx_errors
        listed = {row["path_id"] for row in rows}
        for path_id, path in self.paths.items():
            if path_id not in listed:
                rows.append({"path_id": path_id, "wan": path.wan.name, "state": "connecting",
                             "local": str(path.wan.address)})
        for path_id, gone in self._gone.items():
            if path_id not in listed and path_id not in self.paths:
                rows.append({"path_id": path_id, "wan": gone.wan, "state": "down",
                             "local": gone.local, "down_reason": gone.reason,
                             "since_s": round(now - gone.since, 1)})
        drops = dict(conn.channel_stats.as_dict())
        if snap is not None:
            drops.update({f"bond_{k}": v for k, v in snap.drops.items()})
        counters = self.counters.as_dict()
        counters.update({f"conn_{k}": v for k, v in conn.counters.as_dict().items()})
        if snap is not None:
            counters.update({f"bond_{k}": getattr(snap, k) for k in BOND_COUNTERS})
        tun = self.tun
        return {
            "role": "client",
            "version": __version__,
            "uptime_s": self.uptime(),
            "session": None if conn.session is None else f"{conn.session:08x}",
            "server": str(self.settings.connect),
            "channel": {**channel_summary(self.settings), "rekeys": conn.counters.rekeys},
            "balance": snap.balance if snap is not None else self.settings.balance,
            "reorder": asdict(snap.reorder) if snap is not None else None,
            "tunnel": {"device": tun.name if tun else None,
                       "tunnel_id": self.settings.tunnel_id,
                       "address": str(self.settings.client_tunnel_address),
                       "mtu": tun.mtu if tun else None,
                       "default_route": any(m.present for m in self.routes)},
            "wans": {name: str(w.link.address) for name, w in self.wans.items()},
            "counters": counters,
            "drops": drops,
            "paths": sorted(rows, key=lambda r: int(str(r["path_id"]))),
        }


def run_client(settings: ClientSettings) -> int:
    """Entry point of ``ratbond client``: run until SIGINT/SIGTERM, then clean up."""
    setup_logging(settings.log_level, syslog=settings.syslog, ident="ratbond-client")
    log.log(TRACE, "settings: %s", settings)
    warn_if_plaintext(settings, log)
    return run_until_signalled(lambda loop: ClientRuntime(settings, loop))
