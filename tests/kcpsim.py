"""A simulated datagram network under a fake clock, for testing sans-I/O protocol engines.

Everything is deterministic: randomness comes from a seeded :class:`random.Random` and
time only moves when the test moves it.  Reusable beyond KCP: a :class:`Channel` carries
opaque byte strings one way; :class:`Link` wires two KCP engines through a pair of them.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ratbond.kcp import KCPEngine, Output

EngineFactory = Callable[[int, Output], KCPEngine]


@dataclass
class FakeClock:
    """Milliseconds that advance only when told to."""

    now: int = 0

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now


@dataclass
class Channel:
    """One direction of a lossy, duplicating, reordering, delaying datagram path.

    Each datagram is lost with probability ``loss``, otherwise delivered after ``delay_ms``
    plus a uniform jitter in ``[0, jitter_ms]``; with probability ``reorder`` it is held for
    an extra ``reorder_ms`` (so later datagrams overtake it); with probability ``duplicate``
    a second copy follows with its own delay.
    """

    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_ms: int = 10
    jitter_ms: int = 0
    reorder_ms: int = 30
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    delivered: int = 0
    _queue: list[tuple[int, int, bytes]] = field(default_factory=list)
    _seq: int = 0

    def send(self, data: bytes, now: int) -> None:
        self.sent += 1
        if self.rng.random() < self.loss:
            self.lost += 1
            return
        copies = 1
        if self.rng.random() < self.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            due = now + self.delay_ms
            if self.jitter_ms:
                due += self.rng.randint(0, self.jitter_ms)
            if self.rng.random() < self.reorder:
                due += self.reorder_ms
            self._seq += 1
            heapq.heappush(self._queue, (due, self._seq, bytes(data)))

    def due(self, now: int) -> list[bytes]:
        """Datagrams whose delivery time has come, in delivery order."""
        out = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            out.append(heapq.heappop(queue)[2])
        self.delivered += len(out)
        return out

    def next_due(self) -> int | None:
        return self._queue[0][0] if self._queue else None


class Link:
    """Two KCP engines (``a`` sends to ``b`` over ``forward``, back over ``backward``)."""

    def __init__(
        self,
        make_a: EngineFactory,
        make_b: EngineFactory,
        forward: Channel,
        backward: Channel,
        *,
        conv: int = 0x11223344,
        tick_ms: int = 10,
        start_ms: int = 0,
    ) -> None:
        self.clock = FakeClock(start_ms)
        self.forward = forward
        self.backward = backward
        self.tick_ms = tick_ms
        self.a = make_a(conv, lambda data: forward.send(data, self.clock.now))
        self.b = make_b(conv, lambda data: backward.send(data, self.clock.now))
        self.received_a: list[bytes] = []
        self.received_b: list[bytes] = []
        self.input_errors = 0
        # A test may stop an application from reading, to fill that side's receive window.
        self.reading_a = self.reading_b = True
        self.due_a = self.due_b = start_ms

    def configure(self, setup: Callable[[KCPEngine], object]) -> None:
        """Apply the same settings (nodelay, wndsize, ...) to both ends."""
        setup(self.a)
        setup(self.b)

    def step(self) -> None:
        """Advance one tick: deliver due datagrams, drain receivers, run both timers."""
        now = self.clock.advance(self.tick_ms)
        for data in self.forward.due(now):
            if self.b.input(data) < 0:
                self.input_errors += 1
        for data in self.backward.due(now):
            if self.a.input(data) < 0:
                self.input_errors += 1
        if self.reading_b:
            _drain(self.b, self.received_b)
        if self.reading_a:
            _drain(self.a, self.received_a)
        self.a.update(now)
        self.b.update(now)
        self.due_a = self.a.check(now)
        self.due_b = self.b.check(now)

    def run_until(self, done: Callable[[], bool], max_ms: int) -> bool:
        """Step until ``done()`` or ``max_ms`` of simulated time passed; returns ``done()``."""
        deadline = self.clock.now + max_ms
        while not done():
            if self.clock.now >= deadline:
                return False
            self.step()
        return True


def _drain(engine: KCPEngine, into: list[bytes]) -> None:
    while (message := engine.recv()) is not None:
        into.append(message)


def make_messages(rng: random.Random, count: int, min_size: int, max_size: int) -> list[bytes]:
    """Distinct random payloads (each starts with its index, so mix-ups show)."""
    out = []
    for i in range(count):
        size = max(rng.randint(min_size, max_size), 4)
        out.append(i.to_bytes(4, "big") + rng.randbytes(size - 4))
    return out
