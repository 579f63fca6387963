"""The server's I/O shell: one UDP socket for every client path, the TUN, the timer.

Paths are told apart by the (session, path id) the secure channel authenticated, never by
source address: an authenticated, fresh datagram from a new address moves its path there
(NAT rebinding, a new WAN lease); anything else is dropped and counted by the channel.
The TUN ``tun<tunnel-id>`` appears when the first client session is established.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import cast

from ratbond import __version__
from ratbond.bond import Bond, PathDown, PathUp, PeerClosed
from ratbond.config import TUN_MTU, ServerSettings
from ratbond.crypto import (
    HandshakeRefused,
    KeysRotated,
    ServerChannel,
    SessionClosed,
    SessionEstablished,
)
from ratbond.linux.sockets import drain_datagrams, open_listen_socket
from ratbond.linux.tun import TunDevice
from ratbond.logs import TRACE, RateLimitedLog, setup_logging
from ratbond.runtime.common import (
    BATCH,
    Address,
    Counters,
    bond_config,
    channel_config,
    path_rows,
    warn_if_plaintext,
)
from ratbond.runtime.loop import Deadline, earliest, run_until_signalled
from ratbond.status import StatusServer

log = logging.getLogger("ratbond.server")



@dataclass
class ClientSession:
    """One client's bond and where each of its paths was last heard from."""

    session: int
    bond: Bond
    addresses: dict[int, Address] = field(default_factory=dict)
    established: float = 0.0
    last_heard: float = 0.0


class ServerRuntime:
    """Owns the listening socket, the TUN and one :class:`ClientSession` per client."""

    def __init__(self, settings: ServerSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.started = time.monotonic()
        self.counters = Counters()
        self.ratelog = RateLimitedLog(log)
        self.channel = ServerChannel(channel_config(settings))
        self.sessions: dict[int, ClientSession] = {}
        self.active: ClientSession | None = None
        self.tun: TunDevice | None = None
        self.sock = open_listen_socket(settings.listen.host, settings.listen.port)
        self._timer = Deadline(loop, self._on_timer)
        self._trace = log.isEnabledFor(TRACE)  # read once: per-packet logging costs nothing off
        self.status = StatusServer(self.snapshot)

    async def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._on_socket_readable)
        log.info("listening on %s (tunnel %s, %s)", self.settings.listen,
                 self.settings.server_tun_name, self.channel_mode())
        if self.settings.http_listen is not None:
            await self.status.start(self.settings.http_listen.host,
                                    self.settings.http_listen.port)

    def channel_mode(self) -> str:
        if self.settings.aes:
            return f"encrypted, {self.settings.cipher}"
        return "authenticated" if self.settings.secret else "PLAINTEXT"

    async def stop(self) -> None:
        now = self.loop.time()
        for sess in self.sessions.values():
            sess.bond.close(now)
            self._flush(sess, now)
        self._timer.cancel()
        await self.status.close()
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.tun is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.tun.fd)
            self.tun.close()
        log.info("stopped")

    # ------------------------------------------------------------------ fd callbacks

    def _on_socket_readable(self) -> None:
        now = self.loop.time()
        wall = time.time()
        receive = self.channel.receive_datagram
        touched: set[int] = set()
        datagrams = drain_datagrams(self.sock, BATCH)
        self.counters.rx_datagrams += len(datagrams)
        if self._trace:
            log.log(TRACE, "socket: %d datagrams", len(datagrams))
        for data, source in datagrams:
            addr = cast(Address, source)  # (host, port[, flowinfo, scope]) as the kernel gave
            opened = receive(data, addr, now, wall)
            if opened is None:
                continue
            session_id, path_id, payload = opened
            sess = self.sessions.get(session_id)
            if sess is None:
                sess = self._open_session(session_id, now)
            sess.last_heard = now
            if sess.addresses.get(path_id) != addr or not sess.bond.has_path(path_id):
                self._path_moved(sess, path_id, addr, now)
            if payload:
                sess.bond.receive(path_id, payload, now)
            touched.add(session_id)
        self._send_handshake_replies()
        self._handle_channel_events(now)
        for session_id in touched:
            touched_session = self.sessions.get(session_id)
            if touched_session is not None:
                self._after_work(touched_session, now)
        self._rearm()

    def _on_tun_readable(self) -> None:
        sess, tun = self.active, self.tun
        if tun is None:
            return
        now = self.loop.time()
        packets = tun.read_batch(BATCH)
        self.counters.tun_rx_packets += len(packets)
        if self._trace:
            log.log(TRACE, "tun: read %d packets", len(packets))
        if sess is None:
            self.counters.tun_rx_dropped += len(packets)
            return
        send = sess.bond.send_packet
        for packet in packets:
            if not send(packet, now):
                self.counters.tun_rx_dropped += 1
        self._after_work(sess, now)
        self._rearm()

    def _on_timer(self) -> None:
        now = self.loop.time()
        self.channel.handle_timer(now)
        self._send_handshake_replies()
        self._handle_channel_events(now)
        for sess in list(self.sessions.values()):
            sess.bond.handle_timer(now)
            self._after_work(sess, now)
            if now - sess.last_heard > 3 * self.settings.dead_after:
                self._close_session(sess, "silent")
        self._rearm()

    # ------------------------------------------------------------------ sessions

    def _open_session(self, session_id: int, now: float) -> ClientSession:
        sess = ClientSession(session_id, Bond(bond_config(self.settings), now),
                             established=now, last_heard=now)
        self.sessions[session_id] = sess
        return sess

    def _path_moved(self, sess: ClientSession, path_id: int, addr: Address, now: float) -> None:
        """An authenticated, fresh datagram of a path came from ``addr``: send there now."""
        old = sess.addresses.get(path_id)
        sess.addresses[path_id] = addr
        if not sess.bond.has_path(path_id):
            log.info("session %08x: path %d from %s:%d", sess.session, path_id, *addr[:2])
            sess.bond.add_path(path_id, now)
        elif old is not None and old != addr:
            log.info("session %08x: path %d moved %s:%d -> %s:%d", sess.session, path_id,
                     *old[:2], *addr[:2])

    def _handle_channel_events(self, now: float) -> None:
        while (event := self.channel.next_event()) is not None:
            if isinstance(event, SessionEstablished):
                sess = self.sessions.get(event.session) or self._open_session(event.session, now)
                log.info("session %08x established from %s:%d", event.session, *event.addr[:2])
                self._activate(sess)
            elif isinstance(event, SessionClosed):
                closed = self.sessions.get(event.session)
                if closed is not None:
                    self._close_session(closed, event.reason)
            elif isinstance(event, KeysRotated):
                log.debug("session %08x: keys rotated", event.session)
            elif isinstance(event, HandshakeRefused):
                self.ratelog.log(logging.WARNING, "refused", "handshake from %s:%d refused: %s",
                                 *event.addr[:2], event.reason)

    def _activate(self, sess: ClientSession) -> None:
        """The newest session owns the TUN (one client per tunnel id, as in the original)."""
        for other in list(self.sessions.values()):
            if other is not sess:
                self._close_session(other, "replaced by a newer session")
        self.active = sess
        if self.tun is None:
            s = self.settings
            self.tun = TunDevice.open(s.server_tun_name, mtu=TUN_MTU)
            self.tun.configure(address=s.server_tunnel_address,
                               address6=s.server_tunnel_address6)
            self.loop.add_reader(self.tun.fd, self._on_tun_readable)
            log.info("tunnel %s up with %s", self.tun.name, s.server_tunnel_address)

    def _close_session(self, sess: ClientSession, reason: str) -> None:
        if self.sessions.pop(sess.session, None) is None:
            return
        log.info("session %08x closed: %s", sess.session, reason)
        self.channel.close_session(sess.session)
        if self.active is sess:
            self.active = None

    # ------------------------------------------------------------------ core plumbing

    def _after_work(self, sess: ClientSession, now: float) -> None:
        bond = sess.bond
        while (event := bond.next_event()) is not None:
            if isinstance(event, PathUp):
                log.info("session %08x: path %d up", sess.session, event.path_id)
            elif isinstance(event, PathDown):
                # The address stays: the bond keeps probing a down path, so it comes back
                # as soon as the link does.
                log.info("session %08x: path %d down: %s", sess.session, event.path_id,
                         event.reason)
            elif isinstance(event, PeerClosed):
                self._close_session(sess, "client closed")
                return
        packets = bond.packets_received()
        if packets:
            if self.tun is not None and sess is self.active:
                write = self.tun.write
                for packet in packets:
                    if not write(packet):
                        self.counters.tun_tx_errors += 1
                self.counters.tun_tx_packets += len(packets)
            else:
                self.counters.tun_rx_dropped += len(packets)
        self._flush(sess, now)

    def _flush(self, sess: ClientSession, now: float) -> None:
        seal = self.channel.seal
        sendto = self.sock.sendto
        addresses = sess.addresses
        for path_id, data in sess.bond.datagrams_to_send():
            addr = addresses.get(path_id)
            if addr is None:
                self.counters.tx_no_socket += 1
                continue
            try:
                sendto(seal(sess.session, path_id, data, now), addr)
            except BlockingIOError:
                self.counters.tx_socket_full += 1
            except OSError as exc:
                self.ratelog.log(logging.DEBUG, "tx", "send to %s failed: %s", addr,
                                 exc.strerror)

    def _send_handshake_replies(self) -> None:
        for datagram, addr in self.channel.datagrams_to_send():
            with contextlib.suppress(OSError):
                self.sock.sendto(datagram, addr)

    def _rearm(self) -> None:
        timers = [sess.bond.get_timer() for sess in self.sessions.values()]
        self._timer.arm(earliest(self.channel.get_timer(), *timers))

    # ------------------------------------------------------------------ status

    def snapshot(self) -> dict[str, object]:
        now = self.loop.time()
        paths: list[dict[str, object]] = []
        drops = dict(self.channel.stats.as_dict())
        sessions = {}
        for sess in self.sessions.values():
            snap = sess.bond.snapshot()
            for row in path_rows(snap, now):
                addr = sess.addresses.get(int(str(row["path_id"])))
                row["session"] = f"{sess.session:08x}"
                row["remote"] = f"{addr[0]}:{addr[1]}" if addr else None
                paths.append(row)
            for reason, count in snap.drops.items():
                drops[f"bond_{reason}"] = drops.get(f"bond_{reason}", 0) + count
            sessions[f"{sess.session:08x}"] = {"age_s": round(now - sess.established, 1),
                                               "active": sess is self.active}
        tun = self.tun
        return {
            "role": "server",
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "listen": str(self.settings.listen),
            "channel": self.channel_mode(),
            "session": (f"{self.active.session:08x}" if self.active else None),
            "sessions": sessions,
            "tunnel": {"device": tun.name if tun else None,
                       "address": str(self.settings.server_tunnel_address),
                       "mtu": tun.mtu if tun else None},
            "counters": self.counters.as_dict(),
            "drops": drops,
            "paths": paths,
        }


def run_server(settings: ServerSettings) -> int:
    """Entry point of ``ratbond server``: run until SIGINT/SIGTERM, then clean up."""
    setup_logging(settings.log_level, syslog=settings.syslog, ident="ratbond-server")
    log.log(TRACE, "settings: %s", settings)
    warn_if_plaintext(settings, log)
    return run_until_signalled(lambda loop: ServerRuntime(settings, loop))
