"""The server's shell: one UDP socket for every client path and the TUN, around a
ServerConnection.

Everything that decides anything -- which session owns the TUN, where a path's datagrams
go, when a silent session is reaped -- lives in
:class:`~ratbond.connection.ServerConnection`; this module moves bytes and applies
events.  The TUN ``tun<tunnel-id>`` is created at start and stays until the server stops; the
newest client session owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict
from typing import cast

from ratbond import __version__, deploy_hooks
from ratbond.config import TUN_MTU, ServerSettings
from ratbond.connection import (
    Address,
    ConnectionEvent,
    HandshakeRefused,
    KeysRotated,
    PathDown,
    PathMoved,
    PathUp,
    ServerConnection,
    SessionEnded,
    SessionStarted,
    TunnelUp,
)
from ratbond.linux.sockets import drain_datagrams, open_listen_socket
from ratbond.linux.tun import TunDevice
from ratbond.logs import TRACE, setup_logging
from ratbond.mqtt.publisher import start_publisher
from ratbond.runtime.common import (
    BATCH,
    channel_summary,
    connection_config,
    path_rows,
    status_token,
    warn_if_plaintext,
)
from ratbond.runtime.loop import run_until_signalled
from ratbond.runtime.shell import Shell
from ratbond.status import StatusServer

log = logging.getLogger("ratbond.server")


class ServerRuntime(Shell[ServerConnection]):
    """Owns the listening socket, the TUN and the connection between them."""


    def __init__(self, settings: ServerSettings, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        connection = ServerConnection(connection_config(settings), now=now,
                                      wall_offset=time.time() - now)
        super().__init__(loop, connection, log)
        self.settings = settings
        self.sock = open_listen_socket(settings.listen.host, settings.listen.port)
        self.status = StatusServer(self.snapshot, token=status_token(settings))

    async def start(self) -> None:
        # The TUN exists from the start (the Go original made it with the first client):
        # routes and NAT rules naming it can be installed right after the server starts,
        # and a second instance on the same tunnel id fails at once, not at the first client.
        self._open_tun()
        assert self.tun is not None
        # sysctls, --nat (nftables table 'ratbond'), --route, systemd readiness
        self.deployment = deploy_hooks.server_started(self.settings, self.tun.name)
        self.loop.add_reader(self.sock.fileno(), self._on_socket_readable)
        log.info("listening on %s (tunnel %s, %s)", self.settings.listen,
                 self.settings.server_tun_name, self.channel_mode())
        if self.settings.http_listen is not None:
            await self.status.start(self.settings.http_listen.host,
                                    self.settings.http_listen.port)
        self._after_work(self._now())
        self.mqtt = start_publisher(self.settings.mqtt, "server", self.status, self.loop)

    def channel_mode(self) -> str:
        if self.settings.aes:
            return f"encrypted, {self.settings.cipher}"
        return "authenticated" if self.settings.secret else "PLAINTEXT"

    async def stop(self) -> None:
        self._stop_mqtt()
        now = self._now()
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.connection.close(now)
        self._send_datagrams(now)
        self._timer.cancel()
        await self.status.close()
        self.sock.close()
        deploy_hooks.stopping(self.deployment)
        self._close_tun()
        log.info("stopped")

    # -- fd callbacks ---------------------------------------------------------------------

    def _on_socket_readable(self) -> None:
        now = self._now()
        receive = self.connection.receive_datagram
        datagrams = drain_datagrams(self.sock, BATCH)
        for data, source in datagrams:
            # (host, port[, flowinfo, scope]) as the kernel gave it
            receive(data, cast(Address, source), now)
        self.counters.rx_datagrams += len(datagrams)
        if self._trace:
            log.log(TRACE, "socket: %d datagrams", len(datagrams))
        self._after_work(now)

    def _send_datagrams(self, now: float) -> None:
        sendto = self.sock.sendto
        for datagram, addr in self.connection.datagrams_to_send(now):
            try:
                sendto(datagram, addr)
            except BlockingIOError:
                self.counters.tx_socket_full += 1
            except OSError as exc:
                self.ratelog.log(logging.DEBUG, "tx", "send to %s failed: %s", addr,
                                 exc.strerror)

    # -- events ---------------------------------------------------------------------------

    def _on_event(self, event: ConnectionEvent) -> None:
        if isinstance(event, TunnelUp):
            log.info("first client session: tunnel %s carries traffic",
                     self.settings.server_tun_name)
        elif isinstance(event, SessionStarted):
            addr = event.addr or ("?", 0)
            log.info("session %08x established from %s:%d", event.session, *addr[:2])
        elif isinstance(event, SessionEnded):
            log.info("session %08x closed: %s", event.session, event.reason)
        elif isinstance(event, PathMoved):
            if event.old is None:
                log.info("session %08x: path %d from %s:%d", event.session, event.path_id,
                         *event.new[:2])
            else:
                log.info("session %08x: path %d moved %s:%d -> %s:%d", event.session,
                         event.path_id, *event.old[:2], *event.new[:2])
        elif isinstance(event, PathUp):
            log.info("session %08x: path %d up", event.session, event.path_id)
        elif isinstance(event, PathDown):
            log.info("session %08x: path %d down: %s", event.session, event.path_id,
                     event.reason)
        elif isinstance(event, HandshakeRefused):
            self.ratelog.log(logging.WARNING, "refused", "handshake from %s:%d refused: %s",
                             *event.addr[:2], event.reason)
        elif isinstance(event, KeysRotated):
            log.debug("session %08x: keys rotated", event.session)

    def _open_tun(self) -> None:
        if self.tun is not None:
            return
        s = self.settings
        self.tun = TunDevice.open(s.server_tun_name, mtu=TUN_MTU)
        self.tun.configure(address=s.server_tunnel_address, address6=s.server_tunnel_address6)
        log.info("tunnel %s up with %s", self.tun.name, s.server_tunnel_address)

    # -- status ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        now = self._now()
        conn = self.connection
        paths: list[dict[str, object]] = []
        drops = dict(conn.channel_stats.as_dict())
        sessions = []
        active = conn.active
        for sess in conn.sessions:
            snap = sess.bond.snapshot(now=now)
            name = f"{sess.session:08x}"
            for row in path_rows(snap):
                addr = sess.addresses.get(int(str(row["path_id"])))
                row["session"] = name
                row["remote"] = f"{addr[0]}:{addr[1]}" if addr else None
                paths.append(row)
            for reason, count in snap.drops.items():
                drops[f"bond_{reason}"] = drops.get(f"bond_{reason}", 0) + count
            first = next(iter(sess.addresses.values()), None)
            sessions.append({"session": name, "client": first[0] if first else None,
                             "age_s": round(now - sess.opened, 1), "active": sess is active,
                             "balance": snap.balance, "reorder": asdict(snap.reorder),
                             "drops": dict(snap.drops)})
        counters = self.counters.as_dict()
        counters.update({f"conn_{k}": v for k, v in conn.counters.as_dict().items()})
        tun = self.tun
        return {
            "role": "server",
            "version": __version__,
            "uptime_s": self.uptime(),
            "listen": str(self.settings.listen),
            "channel": {**channel_summary(self.settings), "rekeys": conn.counters.rekeys},
            "balance": self.settings.balance,
            "session": f"{active.session:08x}" if active else None,
            "sessions": sessions,
            "tunnel": {"device": tun.name if tun else None,
                       "tunnel_id": self.settings.tunnel_id,
                       "address": str(self.settings.server_tunnel_address),
                       "mtu": tun.mtu if tun else None},
            "counters": counters,
            "drops": drops,
            "paths": paths,
        }


def run_server(settings: ServerSettings) -> int:
    """Entry point of ``ratbond server``: run until SIGINT/SIGTERM, then clean up."""
    setup_logging(settings.log_level, syslog=settings.syslog, ident="ratbond-server")
    log.log(TRACE, "settings: %s", settings)
    warn_if_plaintext(settings, log)
    return run_until_signalled(lambda loop: ServerRuntime(settings, loop))
