"""The client's I/O shell: WAN sockets, the TUN, netlink, and the timer around the core.

Data path: TUN -> :class:`~ratbond.bond.Bond` -> per-path KCP bytes -> :class:`ClientChannel`
seal -> the path's UDP socket (bound to its WAN address *and* device, so it can never be routed
into the tunnel).  Back: socket -> open -> bond -> TUN.  Every fd is drained until EAGAIN in
one callback and the bond is flushed once per batch (DESIGN.md §2, §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field

from ratbond import __version__
from ratbond.bond import Bond, PathDown, PathUp, PeerClosed
from ratbond.config import TUN_MTU, ClientSettings
from ratbond.crypto import (
    ClientChannel,
    HandshakeCompleted,
    HandshakeFailed,
    HandshakeInitiated,
    KeysRotated,
    SessionExpired,
)
from ratbond.linux.netlink import Rtnl, WanMonitor
from ratbond.linux.routes import DefaultRouteManager, RouteConflictError
from ratbond.linux.sockets import drain_datagrams, open_path_socket
from ratbond.linux.tun import TunDevice
from ratbond.linux.wan import WanAdded, WanAddressChanged, WanLink, WanRemoved, WanTable
from ratbond.logs import TRACE, RateLimitedLog, setup_logging
from ratbond.runtime.common import (
    BATCH,
    Address,
    Counters,
    bond_config,
    channel_config,
    path_rows,
    resolve_server,
    stable_client_id,
    warn_if_plaintext,
)
from ratbond.runtime.loop import Deadline, earliest, run_until_signalled
from ratbond.status import StatusServer

log = logging.getLogger("ratbond.client")



@dataclass
class ClientPath:
    """One KCP path: a WAN link (x mux index) and the socket bound to it."""

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


class ClientRuntime:
    """Owns every fd and the core objects of one client process."""

    def __init__(self, settings: ClientSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.started = time.monotonic()
        self.counters = Counters()
        self.ratelog = RateLimitedLog(log)
        self.channel = ClientChannel(channel_config(settings),
                                     client_id=stable_client_id(settings.tunnel_id))
        self.bond: Bond | None = None
        self.session: int | None = None
        self.tun: TunDevice | None = None
        self.rtnl: Rtnl | None = None
        self.routes: list[DefaultRouteManager] = []
        self.default_route = False
        self.wan_table = WanTable(include=settings.wans, exclude=settings.exclude_wans,
                                  ignore_devices=[settings.client_tun_name])
        self.monitor = WanMonitor(self.wan_table)
        self.wans: dict[str, _Wan] = {}
        self.paths: dict[int, ClientPath] = {}
        self._path_ids: dict[tuple[str, int], int] = {}
        self._tun_reading = False
        self._trace = log.isEnabledFor(TRACE)  # read once: per-packet logging costs nothing off
        self._last_heard = 0.0
        self._next_rescan = 0.0
        self._timer = Deadline(loop, self._on_timer)
        self.status = StatusServer(self.snapshot)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        now = self.loop.time()
        self.tun = TunDevice.open(s.client_tun_name, mtu=TUN_MTU)
        self.tun.configure(address=s.client_tunnel_address, address6=s.client_tunnel_address6)
        log.info("tunnel %s up with %s; server %s", self.tun.name, s.client_tunnel_address,
                 s.connect)
        self.rtnl = Rtnl()
        gateways = [s.server_tunnel_address, s.server_tunnel_address6]
        self.routes = [DefaultRouteManager(self.rtnl, device=self.tun.name, gateway=str(g.ip))
                       for g in gateways if g is not None]
        self.monitor.open()
        self.loop.add_reader(self.monitor.fileno(), self._on_netlink)
        self.monitor.rescan(now)
        self._next_rescan = now + s.rescan_interval
        self._handle_wan_events(now)
        self.channel.connect(now, time.time())
        if s.http_listen is not None:
            await self.status.start(s.http_listen.host, s.http_listen.port)
        self._rearm(now)

    async def stop(self) -> None:
        now = self.loop.time()
        if self.bond is not None:
            self.bond.close(now)
            self._flush(now)
        self._timer.cancel()
        await self.status.close()
        for path_id in list(self.paths):
            self._close_path(path_id)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.monitor.fileno())
        self.monitor.close()
        self._set_default_route(False)
        if self.rtnl is not None:
            self.rtnl.close()
        if self.tun is not None:
            self._set_tun_reading(False)
            self.tun.close()
        log.info("stopped")

    # ------------------------------------------------------------------ fd callbacks

    def _on_tun_readable(self) -> None:
        bond, tun = self.bond, self.tun
        if bond is None or tun is None:
            return
        now = self.loop.time()
        send = bond.send_packet
        packets = tun.read_batch(BATCH)
        self.counters.tun_rx_packets += len(packets)
        for packet in packets:
            if not send(packet, now):
                self.counters.tun_rx_dropped += 1
        if self._trace:
            log.log(TRACE, "tun: read %d packets (%d bytes)", len(packets),
                    sum(map(len, packets)))
        self._after_work(now)

    def _on_path_readable(self, path: ClientPath) -> None:
        now = self.loop.time()
        receive = self.channel.receive_datagram
        bond = self.bond
        got = False
        for data, _addr in drain_datagrams(path.sock, BATCH):
            opened = receive(data, now)
            if opened is None:
                continue
            got = True
            path_id, payload = opened
            if bond is not None and payload:
                bond.receive(path_id, payload, now)
        if got:
            self._last_heard = now
        if self._trace:
            log.log(TRACE, "path %d: datagrams read, authenticated data: %s", path.path_id, got)
        self._after_work(now)

    def _on_netlink(self) -> None:
        now = self.loop.time()
        self.monitor.drain(now)
        self._handle_wan_events(now)
        self._after_work(now)

    def _on_timer(self) -> None:
        now = self.loop.time()
        self.channel.handle_timer(now, time.time())
        self.wan_table.handle_timer(now)
        if now >= self._next_rescan:
            self.monitor.rescan(now)
            self._next_rescan = now + self.settings.rescan_interval
        self._handle_wan_events(now)
        if self.bond is not None:
            self.bond.handle_timer(now)
        self._maybe_rehandshake(now)
        self._after_work(now)

    # ------------------------------------------------------------------ core plumbing

    def _after_work(self, now: float) -> None:
        """Drain every core's output after a batch: events, TUN writes, datagrams, timer."""
        self._handle_channel_events(now)
        bond = self.bond
        if bond is not None:
            self._handle_bond_events(now)
            packets = bond.packets_received()
            if packets and self.tun is not None:
                write = self.tun.write
                for packet in packets:
                    if not write(packet):
                        self.counters.tun_tx_errors += 1
                self.counters.tun_tx_packets += len(packets)
            self._flush(now)
            self._set_tun_reading(bool(bond.live_paths()) and bond.can_send())
        self._rearm(now)

    def _flush(self, now: float) -> None:
        bond = self.bond
        if bond is None:
            return
        seal = self.channel.seal
        paths = self.paths
        for path_id, data in bond.datagrams_to_send():
            path = paths.get(path_id)
            if path is None:
                self.counters.tx_no_socket += 1
                continue
            try:
                path.sock.sendto(seal(path_id, data, now), path.server)
            except BlockingIOError:
                self.counters.tx_socket_full += 1
            except OSError as exc:
                path.tx_errors += 1
                self.ratelog.log(logging.DEBUG, f"tx{path_id}", "path %d (%s): send failed: %s",
                                 path_id, path.wan.name, exc.strerror)

    def _rearm(self, now: float) -> None:
        bond_timer = self.bond.get_timer() if self.bond is not None else None
        self._timer.arm(earliest(bond_timer, self.channel.get_timer(),
                                 self.wan_table.get_timer(), self._next_rescan,
                                 self._rehandshake_deadline()))

    def _set_tun_reading(self, on: bool) -> None:
        """Backpressure: read the TUN only while some path can take more."""
        if on == self._tun_reading or self.tun is None:
            return
        if on:
            self.loop.add_reader(self.tun.fd, self._on_tun_readable)
        else:
            self.loop.remove_reader(self.tun.fd)
        self._tun_reading = on

    # ------------------------------------------------------------------ handshake & session

    def _send_initiations(self) -> None:
        """A handshake attempt goes out on every path: the first to answer wins."""
        for path in self.paths.values():
            datagram = self.channel.initiation_for_path(path.path_id)
            if datagram is None:
                return
            with contextlib.suppress(OSError):
                path.sock.sendto(datagram, path.server)

    def _rehandshake_deadline(self) -> float | None:
        """When to suspect the server lost our session (e.g. it restarted)."""
        if self.session is None or not self.paths:
            return None
        return self._last_heard + self._silence_limit()

    def _silence_limit(self) -> float:
        return max(3.0 * self.settings.hello_interval, 1.0)

    def _maybe_rehandshake(self, now: float) -> None:
        deadline = self._rehandshake_deadline()
        if deadline is not None and now >= deadline:
            self.ratelog.log(logging.INFO, "rehandshake",
                             "nothing heard from the server for %.1f s: new handshake",
                             now - self._last_heard)
            self._last_heard = now  # one attempt per silence period
            self.channel.connect(now, time.time())

    def _handle_channel_events(self, now: float) -> None:
        while (event := self.channel.next_event()) is not None:
            if isinstance(event, HandshakeInitiated):
                log.debug("handshake attempt %d%s", event.attempt,
                          " (rekey)" if event.rekey else "")
                self._send_initiations()
            elif isinstance(event, HandshakeCompleted):
                self._last_heard = now
                if event.session != self.session:
                    self._new_session(event.session, now)
            elif isinstance(event, KeysRotated):
                self._last_heard = now
                # The server switches to the new keys on our next datagram (a HELLO at the
                # latest); until then both key sets are accepted.
                log.debug("session %08x: keys rotated", event.session)
            elif isinstance(event, HandshakeFailed):
                self.ratelog.log(logging.WARNING, "hsfail", "handshake failed: %s",
                                 event.reason)
            elif isinstance(event, SessionExpired):
                log.warning("session %08x expired; reconnecting", event.session)

    def _new_session(self, session: int, now: float) -> None:
        old = self.bond
        if old is not None:
            self._handle_bond_events(now)
        log.info("session %08x established with %s", session, self.settings.connect)
        self.session = session
        self.bond = Bond(bond_config(self.settings), now)
        for path_id in self.paths:
            self.bond.add_path(path_id, now)
        if not self.bond.live_paths():
            self._set_default_route(False)

    def _handle_bond_events(self, now: float) -> None:
        bond = self.bond
        if bond is None:
            return
        while (event := bond.next_event()) is not None:
            if isinstance(event, PathUp):
                path = self.paths.get(event.path_id)
                log.info("path %d up (%s)", event.path_id, path.wan.name if path else "?")
            elif isinstance(event, PathDown):
                log.info("path %d down: %s", event.path_id, event.reason)
            elif isinstance(event, PeerClosed):
                log.info("server closed the session; reconnecting")
                self.channel.connect(now, time.time())
        self._set_default_route(bool(bond.live_paths()))

    def _set_default_route(self, present: bool) -> None:
        """The default route into the tunnel exists exactly while some path is up."""
        if present == self.default_route:
            return
        for manager in self.routes:
            try:
                if present:
                    manager.ensure_present()
                else:
                    manager.ensure_absent()
            except (RouteConflictError, OSError) as exc:
                self.ratelog.log(logging.WARNING, f"route{manager.gateway}",
                                 "default route via %s: %s", manager.gateway, exc)
        self.default_route = present
        log.info("default route via the tunnel %s", "added" if present else "removed")

    # ------------------------------------------------------------------ WAN links

    def _handle_wan_events(self, now: float) -> None:
        while (event := self.wan_table.next_event()) is not None:
            if isinstance(event, WanAdded):
                self._wan_added(event.wan, now)
            elif isinstance(event, WanRemoved):
                self._wan_removed(event.wan, str(event.reason.value), now)
            elif isinstance(event, WanAddressChanged):
                self._wan_readdressed(event.old, event.new, now)

    def _wan_added(self, link: WanLink, now: float) -> None:
        server = resolve_server(self.settings.connect, link.family)
        if server is None:
            self.ratelog.log(logging.WARNING, f"nofam{link.name}",
                             "WAN %s: %s has no address of its family", link.name,
                             self.settings.connect)
            return
        wan = _Wan(link)
        self.wans[link.name] = wan
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
            wan.path_ids.append(path_id)
            self.loop.add_reader(sock.fileno(), self._on_path_readable, path)
            datagram = self.channel.initiation_for_path(path_id)
            if datagram is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(datagram, server)
            if self.bond is not None:
                self.bond.add_path(path_id, now)
        log.info("WAN %s joined (%s, table %d): paths %s", link.name, link.address, link.table,
                 wan.path_ids)

    def _wan_removed(self, link: WanLink, reason: str, now: float) -> None:
        wan = self.wans.pop(link.name, None)
        if wan is None:
            return
        log.info("WAN %s left: %s", link.name, reason)
        for path_id in wan.path_ids:
            if self.bond is not None:
                self.bond.remove_path(path_id, now, f"{link.name} {reason}")
            self._close_path(path_id)

    def _wan_readdressed(self, old: WanLink, new: WanLink, now: float) -> None:
        """A new lease: rebind the sockets, keep the path ids (the server follows)."""
        wan = self.wans.get(old.name)
        if wan is None:
            self._wan_added(new, now)
            return
        log.info("WAN %s moved from %s to %s; rebinding", old.name, old.address, new.address)
        wan.link = new
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

    # ------------------------------------------------------------------ status

    def snapshot(self) -> dict[str, object]:
        now = self.loop.time()
        snap = self.bond.snapshot() if self.bond is not None else None
        paths = path_rows(snap, now)
        for row in paths:
            path = self.paths.get(int(str(row["path_id"])))
            if path is not None:
                row["wan"] = path.wan.name
                row["local"] = str(path.wan.address)
                row["tx_errors"] = path.tx_errors
        known = {row["path_id"] for row in paths}
        for path_id, path in self.paths.items():
            if path_id not in known:
                paths.append({"path_id": path_id, "wan": path.wan.name, "state": "connecting",
                              "local": str(path.wan.address)})
        drops = dict(self.channel.stats.as_dict())
        if snap is not None:
            drops.update({f"bond_{k}": v for k, v in snap.drops.items()})
        tun = self.tun
        return {
            "role": "client",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "session": None if self.session is None else f"{self.session:08x}",
            "server": str(self.settings.connect),
            "tunnel": {"device": tun.name if tun else None,
                       "address": str(self.settings.client_tunnel_address),
                       "mtu": tun.mtu if tun else None,
                       "default_route": self.default_route},
            "wans": {name: str(w.link.address) for name, w in self.wans.items()},
            "counters": self.counters.as_dict(),
            "drops": drops,
            "paths": sorted(paths, key=lambda r: int(str(r["path_id"]))),
        }


def run_client(settings: ClientSettings) -> int:
    """Entry point of ``ratbond client``: run until SIGINT/SIGTERM, then clean up."""
    setup_logging(settings.log_level, syslog=settings.syslog, ident="ratbond-client")
    log.log(TRACE, "settings: %s", settings)
    warn_if_plaintext(settings, log)
    return run_until_signalled(lambda loop: ClientRuntime(settings, loop))
