"""The TUN device: raw IP packets in and out of the kernel through one fd.

Opened with ``IFF_TUN | IFF_NO_PI`` (bare IP packets, no 4-byte header) and non-blocking,
so the runtime can drain it until ``EAGAIN`` from ``loop.add_reader``.  The device is not
persistent: it disappears with the last fd, so a crashed process leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from types import TracebackType

from ratbond.linux.netlink import Rtnl

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SIOCSIFMTU = 0x8922
IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # ifr_name, ifr_flags, padding to sizeof(struct ifreq)
_IFREQ_MTU = struct.Struct("16si20x")

#: Read size: the largest IPv4/IPv6 packet without offloads, whatever the MTU is set to.
READ_SIZE = 65535


class TunError(OSError):
    """The TUN device could not be created or configured."""


class TunDevice:
    """An open TUN interface; ``fd`` is non-blocking."""

    def __init__(self, name: str, fd: int, mtu: int) -> None:
        self.name = name
        self.fd = fd
        self.mtu = mtu
        self.write_errors = 0

    @classmethod
    def open(cls, name: str, *, mtu: int) -> TunDevice:
        """Create the device (``name`` may be a pattern such as ``"tun%d"``) and set its MTU."""
        raw = name.encode()
        if not raw or len(raw) >= IFNAMSIZ:
            raise TunError(f"TUN name {name!r} must be 1..{IFNAMSIZ - 1} bytes")
        if not 68 <= mtu <= 65535:
            raise TunError(f"TUN MTU {mtu} outside 68..65535")
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            reply = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, IFF_TUN | IFF_NO_PI))
            actual = _IFREQ.unpack(reply)[0].rstrip(b"\0").decode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
                fcntl.ioctl(ctl.fileno(), SIOCSIFMTU, _IFREQ_MTU.pack(actual.encode(), mtu))
        except OSError as exc:
            os.close(fd)
            raise TunError(exc.errno, f"cannot create TUN {name!r}: {exc.strerror}") from exc
        return cls(actual, fd, mtu)

    def configure(self, *, address: ipaddress.IPv4Interface | None,
                  address6: ipaddress.IPv6Interface | None = None, up: bool = True) -> None:
        """Assign the tunnel addresses and bring the device up (idempotent, netlink)."""
        with Rtnl() as rtnl:
            index = rtnl.link_index(self.name)
            if up:
                rtnl.set_link(index, up=True)
            if address is not None:
                rtnl.add_address(index, address)
            if address6 is not None:
                rtnl.add_address(index, address6)
            if not up:
                rtnl.set_link(index, up=False)

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Packets the kernel queued, until it has no more or ``max_packets``."""
        out: list[bytes] = []
        read, fd, append = os.read, self.fd, out.append
        for _ in range(max_packets):
            try:
                append(read(fd, READ_SIZE))
            except (BlockingIOError, InterruptedError):
                break
        return out

    def write(self, packet: bytes) -> bool:
        """Hand one IP packet to the kernel; False when it was refused (full, malformed)."""
        try:
            os.write(self.fd, packet)
        except OSError:
            self.write_errors += 1
            return False
        return True

    def close(self) -> None:
        """Close the fd; the kernel removes the (non-persistent) device with it."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice({self.name!r}, fd={self.fd}, mtu={self.mtu})"
