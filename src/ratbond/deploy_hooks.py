"""What the runtimes call at start and stop for deployment: one call each way.

Composes the small single-purpose modules so the lead's runtime files carry one line per
hook: the sysctl check (:mod:`ratbond.linux.sysctl`), the server's forwarding and NAT
(:mod:`ratbond.linux.nat`) and the systemd readiness/watchdog (:mod:`ratbond.linux.sdnotify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from ratbond.config import ClientSettings, ServerSettings
from ratbond.linux import sysctl
from ratbond.linux.nat import ServerForwarding, start_server_forwarding
from ratbond.linux.sdnotify import Watchdog

__all__ = ["Deployment", "client_started", "server_started", "stopping"]

log = logging.getLogger("ratbond.deploy")


@dataclass
class Deployment:
    """What :func:`stopping` must undo."""

    watchdog: Watchdog
    forwarding: ServerForwarding | None = None


def server_started(settings: ServerSettings, tun: str) -> Deployment:
    """After the server's TUN is up: sysctls, ``--nat``, ``--route``, then ``READY=1``."""
    forwarding = start_server_forwarding(settings, tun)
    watchdog = Watchdog(asyncio.get_running_loop())
    watchdog.start()
    return Deployment(watchdog, forwarding)


def client_started(settings: ClientSettings) -> Deployment:
    """After the client's TUN is up: the sysctl check, then ``READY=1``."""
    sysctl.at_start("client", tune=settings.tune_sysctls, tun=settings.client_tun_name,
                    warn=lambda line: log.warning("%s", line))
    watchdog = Watchdog(asyncio.get_running_loop())
    watchdog.start()
    return Deployment(watchdog)


def stopping(deployment: Deployment | None) -> None:
    """On the way out (also after a failed start: ``None``); never raises."""
    if deployment is None:
        return
    deployment.watchdog.stop()
    if deployment.forwarding is not None:
        with contextlib.suppress(Exception):
            deployment.forwarding.stop()
