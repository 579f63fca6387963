"""One direction of an emulated WAN link, as a pure model (no sockets, no clock).

A frame offered at ``now`` goes through, in order:

1. blackhole: dropped at once (``blackholed``);
2. the bottleneck: a virtual clock ``busy_until`` holds when the serializer is free; the
   frame's serialization takes ``bytes*8/rate``; if the backlog ahead of it plus its own
   serialization exceeds ``queue_ms``, it is tail-dropped (``tail_dropped``) - this is the
   bounded router buffer that makes TCP see a real bottleneck;
3. the wire: with probability ``loss`` the frame is lost after using its slot (``lost``);
4. propagation: delivered ``delay ± jitter`` after serialization ends, but never before
   the frame in front of it, so jitter does not reorder.

Because of (4) delivery times are non-decreasing, so a FIFO is the whole timer queue:
the I/O shell asks :meth:`Direction.next_due` and calls :meth:`Direction.pop_due`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass, replace

ETHERNET_HEADER = 14


@dataclass(frozen=True)
class DirectionParams:
    """Behaviour of one direction; ``rate_mbit=None`` means no bottleneck."""

    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    queue_ms: float = 50.0
    blackhole: bool = False

    def with_changes(self, **changes: object) -> DirectionParams:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class DirectionCounters:
    """What happened to the frames offered so far (frames, plus bytes that passed)."""

    passed: int = 0
    passed_bytes: int = 0
    lost: int = 0
    tail_dropped: int = 0
    blackholed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Direction:
    """A bottleneck + delay line for one direction; the caller supplies ``now`` in seconds."""

    def __init__(self, params: DirectionParams, rng: random.Random | None = None) -> None:
        self.params = params
        self.counters = DirectionCounters()
        self._rng = rng or random.Random()
        self._busy_until = 0.0
        self._last_due = 0.0
        self._in_flight: deque[tuple[float, bytes]] = deque()

    def configure(self, params: DirectionParams, now: float) -> None:
        """Apply new parameters to frames offered from now on (a blackhole also cuts the
        frames already on the wire, as pulling a cable would)."""
        self.params = params
        if params.blackhole:
            self.counters.blackholed += len(self._in_flight)
            self._in_flight.clear()
            self._busy_until = now

    def offer(self, frame: bytes, now: float) -> bool:
        """Take a frame arriving at ``now``; True when it was scheduled for delivery."""
        p = self.params
        if p.blackhole:
            self.counters.blackholed += 1
            return False
        done = now
        if p.rate_mbit is not None:
            start = max(now, self._busy_until)
            serialize = (len(frame) - ETHERNET_HEADER) * 8 / (p.rate_mbit * 1e6)
            if start > now and start - now + serialize > p.queue_ms / 1000:
                self.counters.tail_dropped += 1
                return False
            done = self._busy_until = start + serialize
        if p.loss and self._rng.random() < p.loss:
            self.counters.lost += 1
            return False
        delay = p.delay_ms
        if p.jitter_ms:
            delay = max(0.0, delay + self._rng.uniform(-p.jitter_ms, p.jitter_ms))
        due = max(done + delay / 1000, self._last_due)
        self._last_due = due
        self._in_flight.append((due, frame))
        return True

    def next_due(self) -> float | None:
        """When the next frame leaves, or None when nothing is in flight."""
        return self._in_flight[0][0] if self._in_flight else None

    def pop_due(self, now: float) -> list[bytes]:
        """Frames whose time has come, in order; counted as passed."""
        out: list[bytes] = []
        queue = self._in_flight
        while queue and queue[0][0] <= now:
            frame = queue.popleft()[1]
            out.append(frame)
            self.counters.passed_bytes += len(frame)
        self.counters.passed += len(out)
        return out

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)
