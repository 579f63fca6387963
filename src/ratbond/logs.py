"""Logging setup (syslog or stderr, INFO/DEBUG/TRACE) and rate-limited log lines.

Per-packet detail only ever goes to TRACE; anything a peer can trigger repeatedly (bad
datagrams, failed handshakes) goes through :class:`RateLimitedLog` so no one can flood the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {"info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE}


def setup_logging(level: str, *, syslog: bool, ident: str) -> None:
    """Send ratbond's logs to syslog (``/dev/log``) or, with ``--nosyslog`` or without a
    syslog socket, to stderr."""
    root = logging.getLogger("ratbond")
    root.setLevel(_LEVELS[level])
    root.handlers.clear()
    root.propagate = False
    handler: logging.Handler
    if syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter(f"{ident}[{os.getpid()}]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)


class RateLimitedLog:
    """Emit at most one line per ``key`` per ``interval`` seconds, saying how many were held."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the interval; returns whether it logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 1024:  # keys come from code, but stay bounded regardless
            self._last.clear()
            self._held.clear()
        suffix = f" ({held} similar suppressed)" if held else ""
        self._logger.log(level, message + suffix, *args)
        return True
