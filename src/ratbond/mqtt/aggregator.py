"""``ratbond connectaggregator``: a router that takes its client settings from the fleet.

It enrols under a stable id, listens on ``ratbond/router/<id>/settings`` for documents
signed by the fleet key it was installed with (:mod:`ratbond.mqtt.signing`), checks each
like a config file (the document becomes ``client-v<N>.toml`` and goes through
:mod:`ratbond.config`'s loaders), runs ``ratbond client --config`` on it as a child, and
restarts that child cleanly when a newer valid version arrives.  Every 15 s (and at every
change) it publishes a retained hello with what it runs, like the Go original's stats.
The broker is never trusted: a refused document changes nothing and is logged once per
reason per minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ratbond import __version__
from ratbond.config import ClientSettings, ConfigError, client_settings, load_toml
from ratbond.logs import RateLimitedLog
from ratbond.mqtt import topics
from ratbond.mqtt.broker import BrokerLink
from ratbond.mqtt.options import MQTT_KEYS, MqttSettings
from ratbond.mqtt.outbox import Message
from ratbond.mqtt.payloads import encode
from ratbond.mqtt.signing import Refused, SettingsDocument, SettingsVerifier
from ratbond.mqtt.tomlout import render

log = logging.getLogger("ratbond.aggregator")

HELLO_INTERVAL_S = 15.0
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_FIRST_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0


# --------------------------------------------------------------------------- identity


def router_id(machine_id: Path = Path("/etc/machine-id"),
              net_dir: Path = Path("/sys/class/net")) -> str:
    """16 hex digits: the machine id hashed (it is meant to stay private), else the first
    MAC address of a real interface, hashed the same way."""
    seed = ""
    with contextlib.suppress(OSError):
        seed = machine_id.read_text().strip()
    if not seed:
        with contextlib.suppress(OSError):
            for entry in sorted(net_dir.iterdir()):
                mac = (entry / "address").read_text().strip()
                if entry.name != "lo" and mac and mac != "00:00:00:00:00:00":
                    seed = mac
                    break
    if not seed:
        raise RuntimeError("no stable router id: no /etc/machine-id and no MAC address; "
                           "give --router-id")
    return hashlib.sha256(b"ratbond-router:" + seed.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- settings


def client_options(document: SettingsDocument, mqtt: MqttSettings) -> dict[str, Any]:
    """The document's settings as a config file's keys, with this router's own broker
    settings (the fleet cannot point the client's status at another broker)."""
    options = {k: v for k, v in document.settings.items()
               if k.replace("_", "-") not in MQTT_KEYS}
    options["mqtt-broker-addr"] = mqtt.address
    options["mqtt-name"] = mqtt.name
    if mqtt.username is not None:
        options["mqtt-username"] = mqtt.username
    if mqtt.password is not None:
        options["mqtt-password"] = mqtt.password
    if mqtt.ca_file is not None:
        options["mqtt-ca"] = str(mqtt.ca_file)
    return options


def write_client_config(document: SettingsDocument, mqtt: MqttSettings,
                        state_dir: Path) -> tuple[Path, ClientSettings]:
    """Write ``client-v<N>.toml`` (mode 0600) and validate it as ``ratbond client`` would;
    a ConfigError removes the file and names the key as ``client-vN.toml: key``."""
    path = state_dir / f"client-v{document.version}.toml"
    try:
        text = render(client_options(document, mqtt))
    except ValueError as exc:
        raise ConfigError(f"settings version {document.version}: {exc}") from None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    try:
        settings = client_settings(load_toml(str(path)), os.environ)
    except ConfigError:
        path.unlink()
        raise
    return path, settings


# --------------------------------------------------------------------------- the child


class ClientProcess:
    """``ratbond client --config FILE`` as a child: started, stopped cleanly, watched."""

    def __init__(self, extra_args: list[str]) -> None:
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: Path | None = None
        self.starts = 0

    def start(self, config: Path) -> None:
        self.stop()
        self.config = config
        self.proc = subprocess.Popen([sys.executable, "-m", "ratbond", "client",
                                      f"--config={config}", *self.extra_args])
        self.starts += 1
        log.info("client started (pid %d) with %s", self.proc.pid, config.name)

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("client (pid %d) did not stop in %.0f s; killing it", proc.pid,
                            STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
        log.info("client (pid %d) stopped: exit %s", proc.pid, proc.returncode)
        return proc.returncode

    def exited(self) -> int | None:
        """The exit code if the child ended on its own (it is then forgotten)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code, self.proc = self.proc.returncode, None
        return code

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


# --------------------------------------------------------------------------- the loop


@dataclass
class AggregatorState:
    refused: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    invalid: int = 0


class Aggregator:
    def __init__(self, mqtt: MqttSettings, verifier: SettingsVerifier, state_dir: Path,
                 child_args: list[str], *, hello_interval: float = HELLO_INTERVAL_S) -> None:
        self.mqtt = mqtt
        self.router_id = verifier.router_id
        self.verifier = verifier
        self.state_dir = state_dir
        self.child = ClientProcess(child_args)
        self.hello_interval = hello_interval
        self.state = AggregatorState()
        self.inbox: queue.Queue[bytes] = queue.Queue(maxsize=16)
        self.ratelog = RateLimitedLog(log, interval=60.0)
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self._restart_at: float | None = None
        self._backoff = RESTART_BACKOFF_FIRST_S
        state = topics.state_topic("router", self.router_id)
        self.link = BrokerLink(
            mqtt, f"ratbond-router-{self.router_id}",
            will=Message(state, topics.OFFLINE.encode(), retain=True, qos=1),
            birth=Message(state, topics.ONLINE.encode(), retain=True, qos=1),
            subscriptions=[topics.settings_topic(self.router_id)],
            on_message=self._on_message)

    def _on_message(self, _topic: str, payload: bytes) -> None:
        # paho's thread: hand over, never block it (a flood only loses the newest)
        if not payload:  # the fleet cleared its retained settings: keep what runs
            return
        with contextlib.suppress(queue.Full):
            self.inbox.put_nowait(payload)

    def hello(self) -> dict[str, Any]:
        current = self.verifier.current
        return {"router": self.router_id, "version": __version__,
                "hostname": socket.gethostname(), "uptime_s": round(
                    time.monotonic() - self.started, 1),
                "settings_version": None if current is None else current.version,
                "client": {"running": self.child.pid is not None, "pid": self.child.pid,
                           "starts": self.child.starts},
                "refused": dict(self.state.refused), "invalid": self.state.invalid,
                "published_at": round(time.time(), 3)}

    def publish_hello(self) -> None:
        self.link.outbox.put(Message(topics.hello_topic(self.router_id),
                                     encode(self.hello()), retain=True, qos=1))

    def handle(self, payload: bytes, now: float) -> bool:
        """Check one settings message; True when the client was (re)started."""
        checked = self.verifier.check(payload, now)
        if isinstance(checked, Refused):
            self.state.refused[checked.reason] = self.state.refused.get(checked.reason, 0) + 1
            self.ratelog.log(logging.WARNING, checked.reason, "settings refused (%s): %s",
                             checked.reason, checked.detail)
            return False
        current = self.verifier.current
        if current is not None and current.settings == checked.settings:
            self.verifier.accept(checked)  # a re-signed copy: a later expiry, nothing to do
            return False
        try:
            config, _settings = write_client_config(checked, self.mqtt, self.state_dir)
        except ConfigError as exc:
            self.state.invalid += 1
            self.ratelog.log(logging.WARNING, "invalid", "settings version %d refused: %s",
                             checked.version, exc)
            return False
        self.verifier.accept(checked)
        self.state.accepted += 1
        log.info("settings version %d accepted", checked.version)
        self.child.start(config)
        self._backoff = RESTART_BACKOFF_FIRST_S
        self.publish_hello()
        return True

    def _watch_child(self, now: float) -> None:
        code = self.child.exited()
        if code is not None:
            log.warning("client exited with %d; restarting in %.0f s", code, self._backoff)
            self._restart_at = now + self._backoff
            self._backoff = min(self._backoff * 2, RESTART_BACKOFF_MAX_S)
        if (self._restart_at is not None and now >= self._restart_at
                and self.child.config is not None):
            self._restart_at = None
            if self.child.config.exists():
                self.child.start(self.child.config)

    def run(self) -> int:
        self.link.start()
        log.info("router %s: waiting for signed settings on %s", self.router_id,
                 topics.settings_topic(self.router_id))
        next_hello = time.monotonic()
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_hello:
                    self.publish_hello()
                    next_hello = now + self.hello_interval
                try:
                    payload = self.inbox.get(timeout=0.5)
                except queue.Empty:
                    pass
                else:
                    self.handle(payload, time.time())
                self._watch_child(time.monotonic())
        finally:
            self.child.stop()
            self.link.stop(last=[Message(topics.state_topic("router", self.router_id),
                                         topics.OFFLINE.encode(), retain=True, qos=1)])
        return 0

    def stop_on_signals(self) -> None:
        def stop(_signum: int, _frame: FrameType | None) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
