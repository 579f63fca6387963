"""Pieces both shells share: building the cores' configs, counters, status rows."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ratbond.bond import BondConfig, BondSnapshot
from ratbond.config import KCP_MTU, CommonSettings, ConfigError, read_token
from ratbond.connection import ConnectionConfig
from ratbond.crypto import DEFAULT_LIMITS, ChannelConfig, Limits
from ratbond.wire import pack_tunnel_info

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
    rx_datagrams: int = 0  # read from the sockets, before any check

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def channel_config(settings: CommonSettings) -> ChannelConfig:
    """The secure channel's mode from ``--aes``/``--secret`` (stretches the secret once)."""
    return ChannelConfig.from_options(
        aes=settings.aes, secret=settings.secret, cipher=settings.cipher,
        tunnel_info=pack_tunnel_info(settings.tunnel_ip, settings.tunnel_ip6))


#: Test-only: seconds between rekeys (default 120 s; keys are refused 60 s after that). The
#: soak and the rekey tests set it to see many rekeys in a short run; not a user setting.
REKEY_ENV = "RATBOND_TEST_REKEY_AFTER"


def channel_limits(environ: Mapping[str, str] | None = None) -> Limits:
    """The channel's limits: the defaults, unless ``RATBOND_TEST_REKEY_AFTER`` shortens the
    rekey interval (a bad value stops the start with a message naming it)."""
    raw = (os.environ if environ is None else environ).get(REKEY_ENV)
    if raw is None or raw == "":
        return DEFAULT_LIMITS
    try:
        after = float(raw)
    except ValueError:
        after = -1.0
    if not 1.0 <= after <= DEFAULT_LIMITS.rekey_after_time:
        raise ConfigError(f"{REKEY_ENV}={raw!r}: need seconds between 1 and "
                         f"{DEFAULT_LIMITS.rekey_after_time:g}")
    return dataclasses.replace(DEFAULT_LIMITS, rekey_after_time=after,
                               reject_after_time=after + 60.0)


def connection_config(settings: CommonSettings) -> ConnectionConfig:
    """Everything one end's connection object needs from the validated settings."""
    return ConnectionConfig(channel_config(settings), bond_config(settings), channel_limits())


def channel_summary(settings: CommonSettings) -> dict[str, object]:
    """The channel's mode for status views (never anything derived from the secret)."""
    if settings.secret is None:
        return {"mode": "plaintext", "cipher": None}
    if settings.aes:
        return {"mode": "encrypted", "cipher": settings.cipher}
    return {"mode": "authenticated", "cipher": None}


def status_token(settings: CommonSettings) -> str | None:
    """The bearer token the status endpoint requires, if ``--http-token-file`` was given."""
    if settings.http_token_file is None:
        return None
    return read_token(settings.http_token_file)


def bond_config(settings: CommonSettings) -> BondConfig:
    return BondConfig(
        balance=settings.balance,
        duplicate=settings.duplicate,
        hello_interval=settings.hello_interval,
        dead_after=settings.dead_after,
        kcp_engine=settings.kcp_engine,
        kcp_mtu=KCP_MTU,
        snd_wnd=settings.kcp_window,
        rcv_wnd=settings.kcp_window,
    )


def path_rows(snapshot: BondSnapshot | None) -> list[dict[str, object]]:
    """Per-path rows for the status page from a bond snapshot (or none)."""
    if snapshot is None:
        return []
    rows: list[dict[str, object]] = []
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
