"""Pieces both shells share: building the cores' configs, counters, status rows."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

from ratbond.bond import BondConfig
from ratbond.config import KCP_MTU, CommonSettings, HostPort
from ratbond.crypto import ChannelConfig

#: A UDP peer address: (host, port); an IPv6 socket reports (host, port, flowinfo, scope_id),
#: which is passed back to sendto() as it came.
Address = tuple[str, int]

# Datagrams or packets handled per fd callback before yielding to the loop: big enough to
# amortise the loop's overhead, small enough that one busy fd cannot starve the others.
BATCH = 256


@dataclass
class Counters:
    """Shell-level counters (the cores count their own drops)."""

    tun_rx_packets: int = 0
    tun_rx_dropped: int = 0
    tun_tx_packets: int = 0
    tun_tx_errors: int = 0
    tx_socket_full: int = 0
    tx_no_socket: int = 0
    rx_datagrams: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def channel_config(settings: CommonSettings) -> ChannelConfig:
    """The secure channel's mode from ``--aes``/``--secret`` (stretches the secret once)."""
    return ChannelConfig.from_options(aes=settings.aes, secret=settings.secret,
                                      cipher=settings.cipher)


def bond_config(settings: CommonSettings) -> BondConfig:
    return BondConfig(
        balance=settings.balance,
        hello_interval=settings.hello_interval,
        dead_after=settings.dead_after,
        kcp_engine=settings.kcp_engine,
        kcp_mtu=KCP_MTU,
        snd_wnd=settings.kcp_window,
        rcv_wnd=settings.kcp_window,
    )


def resolve_server(target: HostPort, family: int) -> tuple[str, int] | None:
    """The server's address in the WAN's address family, or None if it has none."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, family, socket.SOCK_DGRAM)
    except OSError:
        return None
    for _family, _type, _proto, _name, sockaddr in infos:
        return (str(sockaddr[0]), int(sockaddr[1]))
    return None


def path_rows(snapshot: Any, now: float) -> list[dict[str, object]]:
    """Per-path rows for the status page from a bond snapshot (or none)."""
    if snapshot is None:
        return []
    rows = []
    for path_id, path in sorted(snapshot.paths.items()):
        row: dict[str, object] = {"path_id": path_id}
        row.update(dataclasses.asdict(path))
        rows.append(row)
    return rows


def stable_client_id(tunnel_id: int) -> bytes:
    """8 bytes naming this client to the server across restarts, so a restarted client
    replaces its old session at once (derived from the machine id, never sent in clear
    in a way that identifies the machine: it is hashed with the tunnel id)."""
    seed = b""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, "rb") as handle:
                seed = handle.read(64).strip()
        except OSError:
            continue
        if seed:
            break
    if not seed:
        seed = socket.gethostname().encode()
    return hashlib.sha256(b"ratbond client id|" + seed + b"|%d" % tunnel_id).digest()[:8]


def warn_if_plaintext(settings: CommonSettings, log: logging.Logger) -> None:
    """No secret means anyone on the path can read, inject and replay: say so loudly."""
    if settings.secret is None:
        log.warning("NO SECRET GIVEN: the tunnel runs in PLAINTEXT, unauthenticated; anyone "
                    "on the path can read, inject and replay traffic. Use --aes with "
                    "--secret-file or RATBOND_SECRET.")
    elif not settings.aes:
        log.warning("--secret without --aes: datagrams are authenticated and replay-protected "
                    "but NOT encrypted")
