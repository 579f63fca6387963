"""UDP sockets for paths: pinned to one WAN, big buffers, non-blocking.

A client path socket is bound to its WAN's address *and* to its device
(``SO_BINDTODEVICE``): the route lookup for its packets is then restricted to that
interface, so even while a WAN route flaps a path packet can never be routed into the
tunnel itself (the "tunnel within a tunnel" of the original).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

# Errors a UDP socket reports for an earlier send (from ICMP), never for this read.
_ICMP_ERRORS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                          errno.EHOSTDOWN, errno.EMSGSIZE, errno.ECONNRESET})

#: Large enough for any UDP payload; recvfrom allocates per call, so keep it to one value.
MAX_DATAGRAM = 65535


def _set_buffers(sock: socket.socket, size: int) -> None:
    # The *FORCE variants ignore net.core.[rw]mem_max but need CAP_NET_ADMIN.
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)


def open_path_socket(local: ipaddress.IPv4Address | ipaddress.IPv6Address, device: str | None,
                     *, port: int = 0, buffer_bytes: int = 4 << 20,
                     mark: int | None = None) -> socket.socket:
    """A non-blocking UDP socket bound to ``local`` (and ``device`` when given)."""
    family = socket.AF_INET if local.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _set_buffers(sock, buffer_bytes)
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if family == socket.AF_INET6:
            scope = socket.if_nametoindex(device) if device and local.is_link_local else 0
            sock.bind((str(local), port, 0, scope))
        else:
            sock.bind((str(local), port))
    except BaseException:
        sock.close()
        raise
    return sock


def open_listen_socket(host: str, port: int, *, buffer_bytes: int = 4 << 20) -> socket.socket:
    """The server's UDP socket: ``"::"`` is dual-stack, ``"0.0.0.0"``/``""`` IPv4 only."""
    addr = ipaddress.ip_address(host.strip("[]") or "0.0.0.0")
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _set_buffers(sock, buffer_bytes)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if addr.is_unspecified
                            else 1)
        sock.bind((str(addr), port))
    except BaseException:
        sock.close()
        raise
    return sock


def drain_datagrams(sock: socket.socket,
                    max_datagrams: int = 64) -> list[tuple[bytes, tuple[object, ...]]]:
    """Datagrams queued on ``sock``, until ``EAGAIN`` or ``max_datagrams``.

    ICMP errors reported on the socket (``ECONNREFUSED`` and friends) are skipped: they
    concern an earlier send, not this read.
    """
    out: list[tuple[bytes, tuple[object, ...]]] = []
    recvfrom, append = sock.recvfrom, out.append
    for _ in range(max_datagrams):
        try:
            append(recvfrom(MAX_DATAGRAM))
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno not in _ICMP_ERRORS:
                raise
    return out
