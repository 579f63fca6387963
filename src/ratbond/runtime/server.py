"""The server's shell: one UDP socket for every client path and the TUN(s), around a
ServerConnection.

Everything that decides anything -- which session owns a TUN, where a path's datagrams
go, when a silent session is reaped, which source addresses a client may use -- lives in
:class:`~ratbond.connection.ServerConnection`; this module moves bytes and applies
events.  Without a clients file the TUN ``tun<tunnel-id>`` is created at start and stays
until the server stops; the newest client session owns it.  With ``--clients FILE`` each
client has its own TUN ``tun<tunnel-id>`` (created at start or when a reload adds the
client, with its routes), a packet read from a client's TUN goes to that client's session
only, and SIGHUP re-reads the file (:mod:`ratbond.runtime.clients`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict
from typing import cast

from ratbond import __version__, deploy_hooks
from ratbond.bond.stats import BOND_COUNTERS
from ratbond.clients import ClientsFileError, load_clients
from ratbond.config import TUN_MTU, ServerSettings
from ratbond.connection import (
    Address,
    ConnectionConfig,
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
from ratbond.crypto import ChannelConfig, ChannelMode
from ratbond.crypto.credentials import CredentialTable
from ratbond.linux.nat import NatError
from ratbond.linux.sockets import drain_datagrams, open_listen_socket
from ratbond.linux.tun import TunDevice
from ratbond.logs import TRACE, setup_logging
from ratbond.mqtt.publisher import start_publisher
from ratbond.runtime.clients import ClientsNat, ClientTun, ClientTunnels, plan_reload
from ratbond.runtime.common import (
    BATCH,
    bond_config,
    channel_limits,
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
    """Owns the listening socket, the TUN(s) and the connection between them."""

    def __init__(self, settings: ServerSettings, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.clients: ClientTunnels | None = None
        self.credentials: CredentialTable | None = None
        if settings.clients is None:
            connection = ServerConnection(connection_config(settings), now=now,
                                          wall_offset=time.time() - now)
        else:
            self.clients = ClientTunnels(settings)
            entries = settings.clients.clients
            self.credentials = CredentialTable(self.clients.credentials(entries))
            connection = ServerConnection(
                multi_client_config(settings), now=now,
                wall_offset=time.time() - now, credentials=self.credentials,
                allowed={e.name: e.allowed_ips for e in entries})
        super().__init__(loop, connection, log)
        self.settings = settings
        self.sock = open_listen_socket(settings.listen.host, settings.listen.port)
        self.status = StatusServer(self.snapshot, token=status_token(settings))
        self.reloads = 0
        self.nat: ClientsNat | None = None  # --nat with --clients

    async def start(self) -> None:
        # The TUN exists from the start (the Go original made it with the first client):
        # routes and NAT rules naming it can be installed right after the server starts,
        # and a second instance on the same tunnel id fails at once, not at the first client.
        if self.clients is None:
            self._open_tun()
            assert self.tun is not None
            # sysctls, --nat (nftables table 'ratbond'), --route, systemd readiness
            self.deployment = deploy_hooks.server_started(self.settings, self.tun.name)
            tunnels = self.settings.server_tun_name
        else:
            assert self.settings.clients is not None
            for entry in self.settings.clients.clients:
                self.clients.open(entry)
            if self.settings.nat:
                self.nat = ClientsNat(self.settings)
                self.nat.apply(self.settings.clients.clients)
            # sysctls and readiness; each client's routes came with its TUN, NAT above
            self.deployment = deploy_hooks.server_started(
                dataclasses.replace(self.settings, nat=False, routes=()), "tun*")
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self.loop.add_signal_handler(signal.SIGHUP, self.reload)
            tunnels = f"{len(self.clients.tuns)} clients from {self.settings.clients.path}"
        self.loop.add_reader(self.sock.fileno(), self._on_socket_readable)
        log.info("listening on %s (tunnel %s, %s)", self.settings.listen, tunnels,
                 self.channel_mode())
        if self.settings.http_listen is not None:
            await self.status.start(self.settings.http_listen.host,
                                    self.settings.http_listen.port)
        self._after_work(self._now())
        self.mqtt = start_publisher(self.settings.mqtt, "server", self.status, self.loop)

    def channel_mode(self) -> str:
        if self.settings.aes:
            return f"encrypted, {self.settings.cipher}"
        secure = self.settings.secret is not None or self.clients is not None
        return "authenticated" if secure else "PLAINTEXT"

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
        if self.clients is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(signal.SIGHUP)
            for name in list(self.clients.tuns):
                self._close_client(name)
        if self.nat is not None:
            self.nat.remove()
        log.info("stopped")

    # -- clients file ---------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the clients file; unchanged clients keep their sessions.  A file
        that no longer checks out changes nothing (the error is logged)."""
        assert self.clients is not None and self.credentials is not None
        assert self.settings.clients is not None
        path = self.settings.clients.path
        now = self._now()
        try:
            new = load_clients(path)
            credentials = self.clients.credentials(new.clients)
        except (ClientsFileError, ValueError) as exc:
            log.error("SIGHUP: %s; keeping the %d clients running", exc,
                      len(self.clients.tuns))
            return
        for warning in new.warnings:
            log.warning("%s", warning)
        plan = plan_reload({name: ct.entry for name, ct in self.clients.tuns.items()}, new)
        self.credentials.replace(credentials)
        for name in plan.dropped:
            self.connection.drop_client(name, now)
            self._close_client(name)
        opened = 0
        for entry in plan.opened:
            try:
                self.clients.open(entry)
            except OSError as exc:
                log.error("client %s: cannot create %s: %s", entry.name, entry.tun_name, exc)
                continue
            self.connection.set_allowed(entry.name, entry.allowed_ips)
            opened += 1
        self.clients.forget_unused(new.clients)
        if self.nat is not None and (plan.added or plan.changed or plan.removed):
            try:
                self.nat.apply(ct.entry for ct in self.clients.tuns.values())
            except (NatError, OSError, subprocess.SubprocessError) as exc:
                log.error("SIGHUP: NAT not updated: %s", exc)
        self.settings = dataclasses.replace(self.settings, clients=new)
        self.reloads += 1
        log.info("SIGHUP: %s: %d clients (%d added, %d changed, %d removed, %d unchanged)",
                 path, len(self.clients.tuns), len(plan.added), len(plan.changed),
                 len(plan.removed), len(plan.unchanged))
        self._after_work(now)

    def _close_client(self, name: str) -> None:
        assert self.clients is not None
        client_tun = self.clients.tuns.get(name)
        if client_tun is not None and client_tun.reading:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(client_tun.tun.fd)
            client_tun.reading = False
        self.clients.close(name)

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

    # -- per-client TUNs (a clients file) ---------------------------------------------------

    def _on_client_tun_readable(self, client_tun: ClientTun) -> None:
        tun = client_tun.tun
        if tun.fd < 0:
            return
        now = self._now()
        send = self.connection.send_packet
        name = client_tun.entry.name
        packets = tun.read_batch(BATCH)
        dropped = 0
        for packet in packets:
            if not send(packet, now, name):
                dropped += 1
        counters = self.counters
        counters.tun_rx_packets += len(packets)
        counters.tun_rx_dropped += dropped
        self._after_work(now)

    def _deliver_received(self) -> None:
        if self.clients is None:
            super()._deliver_received()
            return
        tuns = self.clients.tuns
        counters = self.counters
        conn = self.connection
        for name, packets in conn.packets_by_client().items():
            client_tun = tuns.get(name)
            if client_tun is None:  # removed meanwhile
                counters.tun_tx_errors += len(packets)
                continue
            write = client_tun.tun.write
            failed = sum(1 for packet in packets if not write(packet))
            counters.tun_tx_packets += len(packets) - failed
            counters.tun_tx_errors += failed
        if conn.spoofed:
            for name, count in conn.spoofed.items():
                client_tun = tuns.get(name)
                allowed = client_tun.entry.allowed_ips.networks if client_tun else ()
                self.ratelog.log(logging.WARNING, f"spoofed {name}",
                                 "client %s: dropped %d packets whose source address it does "
                                 "not own (allowed-ips %s)", name, count,
                                 ", ".join(map(str, allowed)) or "none")
            conn.spoofed.clear()

    def _set_tun_reading(self, on: bool) -> None:
        """Backpressure per client: read a client's TUN only while its session has room."""
        if self.clients is None:
            super()._set_tun_reading(on)
            return
        can_send = self.connection.can_send
        for name, client_tun in self.clients.tuns.items():
            want = can_send(name)
            if want == client_tun.reading or client_tun.tun.fd < 0:
                continue
            if want:
                self.loop.add_reader(client_tun.tun.fd, self._on_client_tun_readable,
                                     client_tun)
            else:
                self.loop.remove_reader(client_tun.tun.fd)
            client_tun.reading = want

    # -- events ---------------------------------------------------------------------------

    def _on_event(self, event: ConnectionEvent) -> None:
        if isinstance(event, TunnelUp):
            if self.clients is None:
                log.info("first client session: tunnel %s carries traffic",
                         self.settings.server_tun_name)
        elif isinstance(event, SessionStarted):
            addr = event.addr or ("?", 0)
            log.info("%ssession %08x established from %s:%d", _client_prefix(event.client),
                     event.session, *addr[:2])
        elif isinstance(event, SessionEnded):
            log.info("%ssession %08x closed: %s", _client_prefix(event.client), event.session,
                     event.reason)
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
        named = self.clients is not None
        bond_counters = dict.fromkeys(BOND_COUNTERS, 0)
        for sess in conn.sessions:
            snap = sess.bond.snapshot(now=now)
            name = f"{sess.session:08x}"
            for row in path_rows(snap):
                addr = sess.addresses.get(int(str(row["path_id"])))
                row["session"] = name
                row["remote"] = _host_port(addr) if addr else None
                paths.append(row)
            for reason, count in snap.drops.items():
                drops[f"bond_{reason}"] = drops.get(f"bond_{reason}", 0) + count
            for counter in BOND_COUNTERS:
                bond_counters[counter] += getattr(snap, counter)
            first = next(iter(sess.addresses.values()), None)
            # "client": the clients file's name; without one the client's first address
            client = sess.client if named else (first[0] if first else None)
            sessions.append({"session": name, "client": client,
                             "remote": first[0] if first else None,
                             "age_s": round(now - sess.opened, 1),
                             "active": conn.active_of(sess.client) is sess,
                             "balance": snap.balance, "reorder": asdict(snap.reorder),
                             "drops": dict(snap.drops)})
        spoofed = sum(c.spoofed_source for c in conn.client_counters.values())
        if spoofed:
            drops["spoofed_source"] = spoofed
        counters = self.counters.as_dict()
        counters.update({f"conn_{k}": v for k, v in conn.counters.as_dict().items()})
        counters.update({f"bond_{k}": v for k, v in bond_counters.items()})
        active = conn.active
        out: dict[str, object] = {
            "role": "server",
            "version": __version__,
            "uptime_s": self.uptime(),
            "listen": str(self.settings.listen),
            "channel": {**channel_summary(self.settings), "rekeys": conn.counters.rekeys},
            "balance": self.settings.balance,
            "session": f"{active.session:08x}" if active else None,
            "sessions": sessions,
            "tunnel": self._tunnel_status(),
            "counters": counters,
            "drops": drops,
            "paths": paths,
        }
        if self.clients is not None:
            out["channel"] = {**channel_summary(self.settings), "rekeys": conn.counters.rekeys,
                              "mode": "encrypted" if self.settings.aes else "authenticated"}
            out["clients"] = self._client_blocks(now)
        return out

    def _tunnel_status(self) -> dict[str, object]:
        if self.clients is None:
            tun = self.tun
            return {"device": tun.name if tun else None, "tunnel_id": self.settings.tunnel_id,
                    "address": str(self.settings.server_tunnel_address),
                    "mtu": tun.mtu if tun else None}
        # one TUN per client (each in its block under "clients"); this names them together
        return {"device": "tun*", "tunnel_id": None, "address": None, "mtu": TUN_MTU}

    def _client_blocks(self, now: float) -> list[dict[str, object]]:
        """One block per client of the clients file: tunnel, session state, paths, drops."""
        assert self.clients is not None
        conn = self.connection
        blocks: list[dict[str, object]] = []
        for name, client_tun in sorted(self.clients.tuns.items()):
            entry = client_tun.entry
            sess = conn.active_of(name)
            snap = sess.bond.snapshot(now=now) if sess is not None else None
            up = sum(1 for p in (snap.paths.values() if snap else ()) if p.state == "up")
            counters = conn.client_counters.get(name)
            blocks.append({
                "name": name,
                "tunnel": {"device": entry.tun_name, "tunnel_id": entry.tunnel_id,
                           "address": str(entry.server_address),
                           "client_address": str(entry.client_address),
                           "address6": str(entry.server_address6)
                           if entry.server_address6 else None,
                           "routes": [str(net) for net in entry.routes]},
                "state": _client_state(sess is not None, up, len(snap.paths) if snap else 0),
                "session": f"{sess.session:08x}" if sess is not None else None,
                "paths": {"total": len(snap.paths) if snap else 0, "up": up},
                "counters": counters.as_dict() if counters is not None else {},
                "drops": {"spoofed_source": counters.spoofed_source if counters else 0,
                          "tx_no_session": counters.tx_no_session if counters else 0},
            })
        return blocks


def _client_state(has_session: bool, up: int, total: int) -> str:
    if not has_session or up == 0:
        return "down"
    return "up" if up == total else "degraded"


def _client_prefix(client: str | None) -> str:
    return f"client {client}: " if client else ""


def multi_client_config(settings: ServerSettings) -> ConnectionConfig:
    """The connection's config with a clients file: every client's secret is its own (the
    credentials); the channel's mode and cipher come from --aes and --cipher."""
    mode = ChannelMode.ENCRYPTED if settings.aes else ChannelMode.AUTHENTICATED
    # With a credential table the channel never uses the config's key; a random one keeps
    # the config valid and could not be guessed if it were ever used.
    channel = ChannelConfig(mode, os.urandom(32), settings.cipher)
    return ConnectionConfig(channel, bond_config(settings), channel_limits())


def run_server(settings: ServerSettings) -> int:
    """Entry point of ``ratbond server``: run until SIGINT/SIGTERM, then clean up."""
    setup_logging(settings.log_level, syslog=settings.syslog, ident="ratbond-server")
    log.log(TRACE, "settings: %s", settings)
    if settings.clients is None:  # with a clients file every client has its own secret
        warn_if_plaintext(settings, log)
    return run_until_signalled(lambda loop: ServerRuntime(settings, loop))


def _host_port(addr: tuple[str, int]) -> str:
    """``198.51.100.7:4000`` or ``[2001:db8::7]:4000``: an IPv6 address is bracketed, or
    its port could not be told from its last group."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
