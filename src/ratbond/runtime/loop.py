"""Event-loop glue shared by client and server: one re-armable timer and clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Protocol


class Deadline:
    """One timer handle for the whole core, re-armed only when the deadline moves.

    The cores answer ``get_timer()`` with an absolute ``loop.time()`` value (or None); the
    shell calls :meth:`arm` after every batch of work, so a busy loop costs one comparison.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._when: float | None = None

    def arm(self, when: float | None) -> None:
        if when == self._when and self._handle is not None:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = when
        if when is not None:
            self._handle = self._loop.call_at(when, self._expired)

    def _expired(self) -> None:
        self._handle = None
        self._when = None
        self._fire()

    def cancel(self) -> None:
        self.arm(None)


def earliest(*deadlines: float | None) -> float | None:
    """The soonest of several optional deadlines."""
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM end the run through the normal cleanup path."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


class Runtime(Protocol):
    """What a shell offers the loop: start its fds and timers, release everything."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run_until_signalled(make: Callable[[asyncio.AbstractEventLoop], Runtime]) -> int:
    """Run the runtime ``make`` builds until SIGINT/SIGTERM; its ``stop`` always runs."""
    return asyncio.run(_serve(make))


async def _serve(make: Callable[[asyncio.AbstractEventLoop], Runtime]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    install_stop_signals(loop, stop)
    runtime = make(loop)
    try:
        await runtime.start()
        await stop.wait()
    finally:
        await runtime.stop()
    return 0
