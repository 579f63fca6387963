"""systemd readiness and watchdog (``Type=notify``, ``WatchdogSec=``), stdlib only.

A unit with ``Type=notify`` is "started" only when the service says ``READY=1``: ratbond
says it once its TUN is up, so ``After=ratbond-server.service`` units (routes, firewall
rules naming ``tun660``) run when the device exists.  With ``WatchdogSec=`` systemd sets
``WATCHDOG_USEC`` and restarts the service unless ``WATCHDOG=1`` arrives in time; the ping
is sent from a timer of the event loop itself, so a wedged loop stops the pings.  Outside
systemd (no ``NOTIFY_SOCKET``) everything here does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Watchdog", "notify", "watchdog_interval"]

log = logging.getLogger("ratbond.sdnotify")


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path  # '@': the abstract namespace


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``...); never raises."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %s failed: %s", state, exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings: half of ``WATCHDOG_USEC`` (None without a watchdog or when
    ``WATCHDOG_PID`` names another process)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


class Watchdog:
    """``READY=1`` now, then ``WATCHDOG=1`` from the loop; :meth:`stop` says ``STOPPING=1``."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 env: Mapping[str, str] | None = None) -> None:
        self._loop = loop
        self._env = os.environ if env is None else env
        self._interval = watchdog_interval(self._env)
        self._handle: asyncio.TimerHandle | None = None
        self.pings = 0

    def start(self) -> None:
        notify("READY=1", self._env)
        if self._interval is not None:
            self._ping()

    def _ping(self) -> None:
        if notify("WATCHDOG=1", self._env):
            self.pings += 1
        assert self._interval is not None
        self._handle = self._loop.call_later(self._interval, self._ping)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        notify("STOPPING=1", self._env)
