"""``ratbond doctor``'s network probes: does the server answer on this WAN, and how large a
datagram does the path carry.

The reachability probe is a real handshake initiation, built by the client channel
(:class:`ratbond.crypto.ClientChannel`) exactly as the client would send it, from a socket
bound to the WAN's address and device.  The server answers every well-formed initiation:
a RESPONSE (all agrees), a REJECT naming what differs (secret, mode, cipher, tunnel
addressing, clock), or a COOKIE_REPLY when under load; an ICMP port unreachable says that
nothing listens there, and silence that something drops the datagrams.  The probe never
confirms the keys, so the server opens no session and a running client's session is left
alone (a server only makes keys live once the client sends under them).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ratbond.crypto import DEFAULT_LIMITS, ChannelConfig, Limits
from ratbond.crypto.client import ClientChannel
from ratbond.crypto.events import CookieReceived, HandshakeCompleted, HandshakeFailed
from ratbond.linux.sockets import open_path_socket

__all__ = ["ProbeResult", "path_mtu", "probe_server"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Outcome = Literal["accepted", "refused", "unreachable", "silent", "error"]
_PROBE_PATH_ID = 1
# Linux <linux/in.h> / <linux/in6.h>; Python does not export them all.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
IP_MTU = getattr(socket, "IP_MTU", 14)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)


@dataclass(frozen=True)
class ProbeResult:
    """What the server said to one WAN's initiation."""

    outcome: Outcome
    detail: str = ""  # the refusal (the client's own wording) or the socket error
    rtt: float | None = None  # seconds from the last initiation sent to the answer
    clock_skewed: bool = False  # the REJECT said CLOCK_SKEW
    cookie: bool = False  # the server was under load and asked for a cookie round first


def probe_server(config: ChannelConfig, *, local: IPAddress, device: str | None,
                 server: tuple[str, int], timeout: float = 3.0, sends: int = 3,
                 limits: Limits = DEFAULT_LIMITS,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> ProbeResult:
    """Send the initiation from ``local`` on ``device`` to ``server`` up to ``sends`` times
    within ``timeout`` seconds and report the first answer."""
    channel = ClientChannel(config, limits=limits)
    try:
        sock = open_path_socket(local, device, buffer_bytes=1 << 16)
    except OSError as exc:
        return ProbeResult("error", f"cannot bind {local} on {device}: {exc.strerror or exc}")
    with sock:
        try:
            sock.connect(server)  # connected: an ICMP port unreachable becomes an error
        except OSError as exc:
            return ProbeResult("error", f"cannot send to {server[0]}: {exc.strerror or exc}")
        return _exchange(channel, sock, timeout=timeout, sends=sends, clock=clock,
                         wall_clock=wall_clock)


def _exchange(channel: ClientChannel, sock: socket.socket, *, timeout: float, sends: int,
              clock: Callable[[], float], wall_clock: Callable[[], float]) -> ProbeResult:
    start = clock()
    channel.connect(start, wall_clock())
    deadline = start + timeout
    interval = timeout / max(sends, 1)
    next_send = start
    sent_at = start
    cookie = False
    while True:
        now = clock()
        if now >= deadline:
            return ProbeResult("silent", cookie=cookie)
        if now >= next_send:
            datagram = channel.initiation_for_path(_PROBE_PATH_ID)
            if datagram is None:  # cannot happen while the handshake is pending
                return ProbeResult("error", "no initiation to send", cookie=cookie)
            try:
                sock.send(datagram)
            except ConnectionRefusedError:
                return ProbeResult("unreachable", cookie=cookie)
            except OSError as exc:
                return ProbeResult("error", f"send failed: {exc.strerror or exc}", cookie=cookie)
            sent_at, next_send = now, now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - now))
        if not ready:
            continue
        try:
            data = sock.recv(65535)
        except ConnectionRefusedError:
            return ProbeResult("unreachable", cookie=cookie)
        except OSError as exc:
            return ProbeResult("error", f"receive failed: {exc.strerror or exc}", cookie=cookie)
        now = clock()
        answer = _answer(channel, data, now=now, rtt=now - sent_at, cookie=cookie)
        if isinstance(answer, ProbeResult):
            return answer
        if answer:
            cookie, next_send = True, now  # send again at once, now with the cookie


def _answer(channel: ClientChannel, data: bytes, *, now: float, rtt: float, cookie: bool
            ) -> ProbeResult | bool:
    """What one datagram from the server says: a result, or True for a cookie (send the
    initiation again), False for nothing (junk, or a copy)."""
    stale_before = channel.stats.handshake_stale
    channel.receive_datagram(data, now)
    got_cookie = False
    while (event := channel.next_event()) is not None:
        if isinstance(event, HandshakeCompleted):
            return ProbeResult("accepted", rtt=rtt, cookie=cookie)
        if isinstance(event, HandshakeFailed):
            return ProbeResult("refused", event.reason, rtt=rtt,
                               clock_skewed=channel.stats.handshake_stale > stale_before,
                               cookie=cookie)
        if isinstance(event, CookieReceived):
            got_cookie = True
    return got_cookie


def path_mtu(local: IPAddress, device: str | None, server: str, *, wait: float = 0.3,
             rounds: int = 4) -> int | None:
    """The kernel's path MTU towards ``server`` from ``local`` on ``device``, after
    don't-fragment probes of the largest size it allows (an ICMP "fragmentation needed"
    on the way lowers it; each round sends at the lowered size).  None when unknown.

    The probes go to the discard port (9) of the server's address: the path MTU is per
    destination address, and nothing of ratbond's sees them."""
    family = socket.AF_INET if local.version == 4 else socket.AF_INET6
    level, discover, do, mtu_opt, header = (
        (socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU, 28) if family ==
        socket.AF_INET else
        (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU, 48))
    try:
        sock = open_path_socket(local, device, buffer_bytes=1 << 16)
    except OSError:
        return None
    with sock:
        try:
            sock.setsockopt(level, discover, do)
            sock.connect((server, 9))
            mtu = int(sock.getsockopt(level, mtu_opt))
            for _ in range(rounds):
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    try:
                        sock.send(bytes(max(mtu - header, 0)))
                    except OSError as exc:
                        if exc.errno != errno.EMSGSIZE:  # the kernel knows a smaller one already
                            raise
                time.sleep(wait)
                with contextlib.suppress(OSError):  # the ICMP error, if any, surfaces here
                    sock.recv(65535)
                lower = int(sock.getsockopt(level, mtu_opt))
                if lower >= mtu:
                    return mtu
                mtu = lower
            return mtu
        except OSError:
            return None
