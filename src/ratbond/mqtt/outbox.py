"""A bounded, thread-safe outbox between the event loop and the MQTT thread.

The loop puts and never waits; when the broker is slow or gone the oldest message goes
(and is counted), so memory stays bounded and the tunnel never notices.  Retained topics
(status, state) keep only their newest value: after an outage the fleet needs the state
now, not every stale sample.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 0


class Outbox:
    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._events: deque[Message] = deque()
        self._latest: dict[str, Message] = {}
        self._cond = threading.Condition()
        self.dropped = 0
        self.put_total = 0
        self.closed = False

    def put(self, message: Message) -> None:
        """Queue ``message``; a retained one replaces the previous value of its topic."""
        with self._cond:
            self.put_total += 1
            if message.retain:
                if message.topic not in self._latest and len(self._latest) >= self.capacity:
                    self.dropped += 1
                    return
                self._latest[message.topic] = message
            else:
                if len(self._events) >= self.capacity:
                    self._events.popleft()
                    self.dropped += 1
                self._events.append(message)
            self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._events) + len(self._latest)

    def take(self, timeout: float | None = None) -> list[Message]:
        """Everything queued (retained values first, then events in order); waits up to
        ``timeout`` for something when empty.  Empty after :meth:`close`."""
        with self._cond:
            if not self._events and not self._latest and not self.closed:
                self._cond.wait(timeout)
            out = list(self._latest.values()) + list(self._events)
            self._latest.clear()
            self._events.clear()
            return out

    def give_back(self, messages: list[Message]) -> None:
        """Messages taken but not sent (the broker went away): back to the front, newer
        retained values and the capacity still winning."""
        with self._cond:
            for message in messages:
                if message.retain:
                    self._latest.setdefault(message.topic, message)
            events = [m for m in messages if not m.retain]
            for message in reversed(events):
                if len(self._events) >= self.capacity:
                    self.dropped += 1
                    continue
                self._events.appendleft(message)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
