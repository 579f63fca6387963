"""Two bonds wired back to back through a simulated network, on a hand-stepped clock.

Test-only (it lived in ``ratbond.bond.simnet`` before): import it as ``tests.simnet``.

For tests, benchmarks and experiments: each path has its own one-way delay and loss rate
per direction and can be blackholed; the "server" side adds a path when its first
datagram arrives, as the real server shell does.  Deterministic for a given ``seed``.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from ratbond.bond.bond import Bond
from ratbond.bond.events import BondEvent

_MAX_STEPS_PER_INSTANT = 10_000


@dataclass
class Direction:
    """One direction of one path."""

    delay: float = 0.01
    loss: float = 0.0
    rate: float | None = None  # datagrams/s the link serializes; None = unlimited
    buffer: float | None = None  # seconds of queue a rated link holds; None = unlimited
    tail_dropped: int = 0  # refused by a full buffer
    blackhole: bool = False
    busy_until: float = 0.0  # when the link finishes serializing what it holds
    datagrams: int = 0  # handed to the network
    delivered: int = 0


@dataclass(eq=False)
class Side:
    """One bond and what came out of it."""

    bond: Bond
    packets: list[bytes] = field(default_factory=list)
    events: list[tuple[float, BondEvent]] = field(default_factory=list)  # (when, event)


class SimNet:
    """Client and server bonds, paths between them, one fake clock (``now``)."""

    def __init__(self, client: Bond, server: Bond, *, now: float = 0.0, seed: int = 1) -> None:
        self.now = now
        self.client = Side(client)
        self.server = Side(server)
        # (path_id, sender is client) -> Direction
        self.directions: dict[tuple[int, bool], Direction] = {}
        self.auto_add = True
        self._random = random.Random(seed)
        self._in_flight: list[tuple[float, int, bool, int, bytes]] = []
        self._counter = 0

    def link(
        self,
        path_id: int,
        *,
        delay: float = 0.01,
        delay_back: float | None = None,
        loss: float = 0.0,
        loss_back: float | None = None,
        rate: float | None = None,
        buffer: float | None = None,
    ) -> None:
        """Set path ``path_id``'s client->server (and back) delay, loss and rate.

        With a ``rate`` the link serializes datagrams one after another, like a
        bottleneck; its queue holds ``buffer`` seconds (tail drop beyond), or is
        unlimited when ``buffer`` is None.
        """
        self.directions[(path_id, True)] = Direction(delay, loss, rate, buffer)
        self.directions[(path_id, False)] = Direction(
            delay if delay_back is None else delay_back,
            loss if loss_back is None else loss_back,
            rate,
            buffer,
        )

    def direction(self, path_id: int, from_client: bool = True) -> Direction:
        return self.directions.setdefault((path_id, from_client), Direction())

    def blackhole(self, path_id: int, on: bool = True) -> None:
        """Silently drop everything on ``path_id`` both ways (or stop doing so)."""
        self.direction(path_id, True).blackhole = on
        self.direction(path_id, False).blackhole = on

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, end: float) -> None:
        """Advance the clock to ``end``, delivering datagrams and firing timers on time."""
        steps_at_instant = 0
        while True:
            self.pump()
            due = end
            if self._in_flight:
                due = min(due, self._in_flight[0][0])
            for side in (self.client, self.server):
                timer = side.bond.get_timer()
                if timer is not None:
                    due = min(due, timer)
            if due > self.now:
                self.now = due
                steps_at_instant = 0
            else:
                steps_at_instant += 1
                if steps_at_instant > _MAX_STEPS_PER_INSTANT:
                    raise RuntimeError(f"simulation stuck at t={self.now}")
            self._deliver_due()
            for side in (self.client, self.server):
                timer = side.bond.get_timer()
                if timer is not None and timer <= self.now:
                    side.bond.handle_timer(self.now)
            self.pump()
            if self.now >= end and not self._anything_due():
                return

    def pump(self) -> None:
        """Move every bond's output into the network and collect packets and events."""
        for side, from_client in ((self.client, True), (self.server, False)):
            bond = side.bond
            for path_id, datagram in bond.datagrams_to_send():
                direction = self.direction(path_id, from_client)
                direction.datagrams += 1
                if direction.blackhole or (
                    direction.loss and self._random.random() < direction.loss
                ):
                    continue
                departure = self.now
                buffer = direction.buffer
                queued = direction.busy_until - self.now
                if direction.rate and buffer is not None and queued > buffer:
                    direction.tail_dropped += 1
                    continue
                if direction.rate:
                    departure = max(departure, direction.busy_until) + 1.0 / direction.rate
                    direction.busy_until = departure
                self._counter += 1
                heapq.heappush(
                    self._in_flight,
                    (departure + direction.delay, self._counter, from_client, path_id, datagram),
                )
            side.packets.extend(bond.packets_received())
            event = bond.next_event()
            while event is not None:
                side.events.append((self.now, event))
                event = bond.next_event()

    def _deliver_due(self) -> None:
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= self.now:
            _, _, from_client, path_id, datagram = heapq.heappop(in_flight)
            receiver = self.server if from_client else self.client
            bond = receiver.bond
            if from_client and self.auto_add and not bond.has_path(path_id):
                bond.add_path(path_id, self.now)
            self.direction(path_id, from_client).delivered += 1
            bond.receive(path_id, datagram, self.now)

    def _anything_due(self) -> bool:
        if self._in_flight and self._in_flight[0][0] <= self.now:
            return True
        for side in (self.client, self.server):
            timer = side.bond.get_timer()
            if timer is not None and timer <= self.now:
                return True
        return False
