"""What a running client or server publishes: its status model, its events, its state.

Made by the runtime shell (``start()`` / ``stop()`` / ``on_event()``); everything it does
on the event loop is a dict build and a queue put.  Sending is the
:class:`~ratbond.mqtt.broker.BrokerLink`'s business, on its own threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ratbond.connection import ConnectionEvent
from ratbond.mqtt import topics
from ratbond.mqtt.broker import BrokerLink
from ratbond.mqtt.options import MqttSettings
from ratbond.mqtt.outbox import Message, Outbox
from ratbond.mqtt.payloads import encode, event_payload, status_payload
from ratbond.status import StatusServer
from ratbond.status.model import to_dict

log = logging.getLogger("ratbond.mqtt")

STATUS_INTERVAL_S = 5.0
OUTBOX_CAPACITY = 256

ModelFn = Callable[[], dict[str, Any]]


def state_message(role: topics.Role, name: str, state: str) -> Message:
    return Message(topics.state_topic(role, name), state.encode(), retain=True, qos=1)


class MqttPublisher:
    """Publishes ``model_fn()`` every ``interval`` s and each event as it happens."""

    def __init__(self, settings: MqttSettings, role: topics.Role, model_fn: ModelFn,
                 loop: asyncio.AbstractEventLoop, *, interval: float = STATUS_INTERVAL_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.role = role
        self.model_fn = model_fn
        self.loop = loop
        self.interval = interval
        self.wall = wall
        self.outbox = Outbox(OUTBOX_CAPACITY)
        self.status_topic = topics.status_topic(role, settings.name)
        self.events_topic = topics.events_topic(role, settings.name)
        self.link = BrokerLink(settings, f"ratbond-{role}-{settings.name}-{os.getpid()}",
                               will=state_message(role, settings.name, topics.OFFLINE),
                               birth=state_message(role, settings.name, topics.ONLINE),
                               outbox=self.outbox)
        self._timer: asyncio.Handle | None = None
        self.model_failures = 0

    @classmethod
    def maybe(cls, settings: MqttSettings | None, role: topics.Role, model_fn: ModelFn,
              loop: asyncio.AbstractEventLoop) -> MqttPublisher | None:
        """A publisher when ``--mqtt-broker-addr`` was given, else None."""
        return None if settings is None else cls(settings, role, model_fn, loop)

    def start(self) -> None:
        self.link.start()
        log.info("publishing status to MQTT %s under %s", self.settings.address,
                 self.status_topic.rpartition("/")[0])
        self._timer = self.loop.call_soon(self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.link.stop(last=[state_message(self.role, self.settings.name, topics.OFFLINE)])

    def on_event(self, event: ConnectionEvent) -> None:
        body = event_payload(event, self.wall())
        if body is not None:
            self.outbox.put(Message(self.events_topic, encode(body)))

    def publish_status(self) -> None:
        try:
            model = self.model_fn()
        except Exception as exc:  # a status bug must not stop the loop or the publishing
            self.model_failures += 1
            if self.model_failures == 1:
                log.error("status model for MQTT failed: %r", exc)
            return
        body = status_payload(model, self.settings.name, self.wall())
        body["mqtt"] = {"dropped": self.outbox.dropped, "connects": self.link.connects}
        self.outbox.put(Message(self.status_topic, encode(body), retain=True))

    def _tick(self) -> None:
        self.publish_status()
        self._timer = self.loop.call_later(self.interval, self._tick)


def start_publisher(settings: MqttSettings | None, role: topics.Role, status: StatusServer,
                    loop: asyncio.AbstractEventLoop) -> MqttPublisher | None:
    """For the runtime's ``start()``: publish ``status``' model (the ``/status.json`` one)
    when ``--mqtt-broker-addr`` was given; None otherwise."""
    if settings is None:
        return None
    publisher = MqttPublisher(settings, role, lambda: to_dict(status.model()), loop)
    publisher.start()
    return publisher
