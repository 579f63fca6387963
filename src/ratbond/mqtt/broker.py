"""One connection to the MQTT broker, on paho-mqtt's own network thread.

The event loop only ever puts messages into an :class:`~ratbond.mqtt.outbox.Outbox`; a
pump thread hands them to paho while connected.  paho reconnects with back-off (1 s up to
60 s); each change of state (connected, lost, cannot connect) is logged once, so a broker
that stays dead costs one line, not one per retry.  paho's own queue is bounded too.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ratbond.mqtt.options import MqttSettings
from ratbond.mqtt.outbox import Message, Outbox

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = logging.getLogger("ratbond.mqtt")

INSTALL_HINT = ("--mqtt-broker-addr needs the MQTT library: install ratbond with the 'mqtt' "
                "extra (pip install 'ratbond[mqtt]', which brings paho-mqtt)")
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 60
KEEPALIVE_S = 30
PAHO_QUEUE = 64

MessageHandler = Callable[[str, bytes], None]


class MqttUnavailableError(RuntimeError):
    """paho-mqtt is not installed."""


def mqtt_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("paho.mqtt.client") is not None
    except ModuleNotFoundError:
        return False


def _import_paho() -> Any:
    try:
        from paho.mqtt import client
    except ImportError:  # pragma: no cover - the suite installs the extra
        raise MqttUnavailableError(INSTALL_HINT) from None
    return client


class BrokerLink:
    """Publishes what is put in :attr:`outbox`; optionally subscribes and hands messages
    to ``on_message(topic, payload)`` (called on paho's thread)."""

    def __init__(self, settings: MqttSettings, client_id: str, *,
                 will: Message | None = None, birth: Message | None = None,
                 subscriptions: Sequence[str] = (), on_message: MessageHandler | None = None,
                 outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.client_id = client_id
        self.will = will
        self.birth = birth
        self.subscriptions = tuple(subscriptions)
        self.on_message = on_message
        self.outbox = outbox if outbox is not None else Outbox()  # an empty one is falsy
        self.connected = threading.Event()
        self.connects = 0
        self.publish_failures = 0
        self._state = "new"
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()
        self._client: paho.Client | None = None
        self._pump: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        mqtt = _import_paho()
        s = self.settings
        client: paho.Client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                          client_id=self.client_id, clean_session=True)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca_file is not None:
            client.tls_set(ca_certs=str(s.ca_file), cert_reqs=ssl.CERT_REQUIRED)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, qos=1, retain=self.will.retain)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(PAHO_QUEUE)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._client = client
        client.connect_async(s.host, s.port, keepalive=KEEPALIVE_S)
        client.loop_start()
        self._pump = threading.Thread(target=self._pump_forever, name="ratbond-mqtt-pump",
                                      daemon=True)
        self._pump.start()

    def stop(self, last: Sequence[Message] = (), timeout: float = 2.0) -> None:
        """Send ``last`` (e.g. ``offline``) if connected, then disconnect.  Bounded: paho
        may sit in a connect to a blackholed broker, so the teardown runs in a daemon
        thread and is abandoned after ``2 * timeout`` s (the process is ending anyway)."""
        client, self._client = self._client, None
        if client is None:
            return
        self._stopping.set()
        self.outbox.close()
        teardown = threading.Thread(target=self._teardown, args=(client, last, timeout),
                                    name="ratbond-mqtt-stop", daemon=True)
        teardown.start()
        teardown.join(2 * timeout)

    def _teardown(self, client: paho.Client, last: Sequence[Message], timeout: float) -> None:
        if self._pump is not None:
            self._pump.join(timeout)
        if self.connected.is_set():
            for message in last:
                try:
                    info = client.publish(message.topic, message.payload, qos=1,
                                          retain=message.retain)
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError):
                    break
        client.disconnect()
        client.loop_stop()

    # -- paho callbacks (paho's thread) ----------------------------------------------------

    def _set_state(self, state: str, level: int, text: str, *args: object) -> None:
        with self._state_lock:
            if state == self._state:
                return
            self._state = state
        log.log(level, text, *args)

    def _on_connect(self, client: paho.Client, _userdata: object, _flags: object,
                    reason: Any, _properties: object = None) -> None:
        if getattr(reason, "is_failure", False):
            self.connected.clear()
            self._set_state("refused", logging.WARNING, "MQTT broker %s refused the connection:"
                            " %s; retrying with back-off", self.settings.address, reason)
            return
        self.connects += 1
        for pattern in self.subscriptions:
            client.subscribe(pattern, qos=1)
        if self.birth is not None:
            client.publish(self.birth.topic, self.birth.payload, qos=1, retain=self.birth.retain)
        self.connected.set()
        self.outbox.wake()
        self._set_state("connected", logging.INFO, "MQTT broker %s connected as %s",
                        self.settings.address, self.client_id)

    def _on_disconnect(self, _client: paho.Client, _userdata: object, _flags: object,
                       reason: Any, _properties: object = None) -> None:
        self.connected.clear()
        if self._stopping.is_set():
            return
        self._set_state("lost", logging.WARNING, "MQTT broker %s: connection lost (%s); "
                        "retrying with back-off, the tunnel is not affected",
                        self.settings.address, reason)

    def _on_connect_fail(self, _client: paho.Client, _userdata: object) -> None:
        self.connected.clear()
        self._set_state("unreachable", logging.WARNING, "MQTT broker %s unreachable; retrying "
                        "with back-off (up to %d s), the tunnel is not affected",
                        self.settings.address, RECONNECT_MAX_S)

    def _on_message(self, _client: paho.Client, _userdata: object, message: Any) -> None:
        if self.on_message is None:
            return
        try:
            self.on_message(str(message.topic), bytes(message.payload))
        except Exception:  # a handler's bug must not kill paho's thread
            log.exception("MQTT message on %s: handler failed", message.topic)

    # -- the pump (its own thread) ---------------------------------------------------------

    def _pump_forever(self) -> None:
        while not self._stopping.is_set():
            if not self.connected.wait(0.5):
                continue
            batch = self.outbox.take(timeout=0.5)
            self._send(batch)

    def _send(self, batch: list[Message]) -> None:
        client = self._client
        for index, message in enumerate(batch):
            if client is None or not self.connected.is_set():
                self.outbox.give_back(batch[index:])
                return
            try:
                info = client.publish(message.topic, message.payload, qos=message.qos,
                                      retain=message.retain)
            except (RuntimeError, ValueError):
                info = None
            if info is None or info.rc != 0:
                self.publish_failures += 1
                self.outbox.give_back(batch[index:])
                self._stopping.wait(0.2)  # paho's queue is full or the link just went
                return
