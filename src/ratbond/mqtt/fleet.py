"""``ratbond fleet``: serves each router its signed settings and shows the fleet.

Settings come from ``DIR/<router-id>.toml`` (the client's config-file keys), are checked
with :mod:`ratbond.config`'s loaders before anything is signed, and are published retained
on ``ratbond/router/<id>/settings``.  A changed file gets the next version number (kept in
``DIR/.fleet-state.json``, so versions only grow across restarts); every document is
re-signed with a fresh expiry when half its validity has passed.  The view listens to every
end's status, state and hello topics and draws one table row per end (``--watch``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ratbond.config import ConfigError, Options, client_settings, load_toml
from ratbond.mqtt import topics
from ratbond.mqtt.broker import BrokerLink
from ratbond.mqtt.options import MQTT_KEYS, MqttSettings
from ratbond.mqtt.outbox import Message
from ratbond.mqtt.signing import DEFAULT_VALIDITY_S, SettingsDocument, sign

log = logging.getLogger("ratbond.fleet")

STATE_FILE = ".fleet-state.json"
SCAN_INTERVAL_S = 2.0
#: Keys naming files on the router: the controller cannot read them, so it only checks
#: the rest (the router checks everything again before it runs the client).
_ROUTER_FILES = ("secret-file", "http-token-file")


# --------------------------------------------------------------------------- settings


def check_router_settings(options: Options) -> list[str]:
    """Validate a router's settings file as ``ratbond client`` would (less the files that
    live on the router); returns warnings, raises ConfigError naming ``FILE: key``."""
    probe = Options({k: v for k, v in options.items() if k not in MQTT_KEYS},
                    options.labels, options.file)
    warnings: list[str] = []
    if "secret-file" in probe:
        probe.pop("secret-file")
        probe["secret"] = "checked-on-the-router"
    probe.pop("http-token-file", None)
    if "secret" in options:
        warnings.append(f"{options.labels.get('secret', 'secret')}: the secret travels signed "
                        "but readable through the broker; prefer secret-file = a path on the "
                        "router")
    client_settings(probe, {})
    return warnings


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass
class Served:
    version: int
    digest: str
    expires: float = 0.0


class FleetController:
    """Keeps the retained settings of every router in step with ``settings_dir``."""

    def __init__(self, key: Ed25519PrivateKey, settings_dir: Path, publish: Callable[[Message],
                 None], *, validity: float = DEFAULT_VALIDITY_S,
                 wall: Callable[[], float] = time.time) -> None:
        self.key = key
        self.dir = settings_dir
        self.publish = publish
        self.validity = validity
        self.wall = wall
        self.served: dict[str, Served] = {}
        self.published: set[str] = set()  # routers with a retained document out there
        self.problems: dict[str, str] = {}  # router -> the last error, logged once
        self._load_state()

    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def _load_state(self) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(self._state_path().read_text())
            self.served = {rid: Served(int(v["version"]), str(v["digest"]))
                           for rid, v in data.items()}

    def _save_state(self) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({rid: {"version": s.version, "digest": s.digest}
                                   for rid, s in self.served.items()}, indent=1))
        os.replace(tmp, self._state_path())

    def _problem(self, router: str, text: str) -> None:
        if self.problems.get(router) != text:
            self.problems[router] = text
            log.warning("%s", text)

    def scan(self) -> list[str]:
        """Publish what changed; returns the routers (re)published."""
        now = self.wall()
        seen: set[str] = set()
        sent: list[str] = []
        for path in sorted(self.dir.glob("*.toml")):
            router = path.stem
            try:
                topics.settings_topic(router)
            except topics.TopicError:
                self._problem(router, f"{path}: {router!r} cannot be a router id")
                continue
            seen.add(router)
            try:
                options = load_toml(str(path))
                warnings = check_router_settings(options)
            except ConfigError as exc:
                self._problem(router, f"{exc}; router {router} keeps its current settings")
                continue
            settings = dict(options)
            digest = settings_digest(settings)
            served = self.served.get(router)
            changed = served is None or served.digest != digest
            if not changed and router in self.published and served is not None \
                    and served.expires - now > self.validity / 2:
                continue
            if changed:
                for warning in warnings:
                    log.warning("%s", warning)
            version = (served.version + 1 if served is not None and changed
                       else served.version if served is not None else 1)
            document = SettingsDocument(router, version, round(now, 3),
                                        round(now + self.validity, 3), settings)
            self.publish(Message(topics.settings_topic(router), sign(document, self.key),
                                 retain=True, qos=1))
            self.served[router] = Served(version, digest, now + self.validity)
            self.published.add(router)
            self.problems.pop(router, None)
            sent.append(router)
            if changed:
                log.info("router %s: settings version %d published", router, version)
        for router in sorted(self.published - seen):
            self.publish(Message(topics.settings_topic(router), b"", retain=True, qos=1))
            self.published.discard(router)
            log.info("router %s: settings file gone; retained settings cleared", router)
        if sent:
            self._save_state()
        return sent


# --------------------------------------------------------------------------- the view


@dataclass
class Member:
    role: str
    name: str
    state: str = "?"
    status: dict[str, Any] = field(default_factory=dict)
    hello: dict[str, Any] = field(default_factory=dict)
    last_seen: float | None = None
    events: int = 0
    last_event: str = ""


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rate(value: object) -> str:
    rate = _float(value)
    return "-" if rate is None else f"{rate * 8 / 1e6:.2f}"


def _ago(now: float, then: float | None) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


class FleetView:
    """Every end seen on the status topics; fed from paho's thread, read from another."""

    def __init__(self) -> None:
        self.members: dict[tuple[str, str], Member] = {}
        self._lock = threading.Lock()
        self.ignored = 0

    def update(self, topic: str, payload: bytes, now: float) -> None:
        parsed = topics.parse(topic)
        if parsed is None or parsed.kind == "settings":
            return
        body: Any = None
        if parsed.kind != "state":
            try:
                body = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                self.ignored += 1
                return
            if not isinstance(body, dict):
                self.ignored += 1
                return
        with self._lock:
            member = self.members.setdefault((parsed.role, parsed.name),
                                             Member(parsed.role, parsed.name))
            if parsed.kind == "state":
                member.state = payload.decode(errors="replace")[:16] or "?"
                return
            member.last_seen = now
            if parsed.kind == "status":
                member.status = body
            elif parsed.kind == "hello":
                member.hello = body
            elif parsed.kind == "events":
                member.events += 1
                member.last_event = " ".join(str(body.get(k)) for k in ("event", "path_id")
                                             if body.get(k) is not None)

    def rows(self, now: float) -> list[list[str]]:
        with self._lock:
            members = sorted(self.members.values(), key=lambda m: (m.role, m.name))
            out: list[list[str]] = []
            for m in members:
                totals = _dict(m.status.get("totals"))
                rates = _dict(totals.get("rates"))
                paths = (f"{totals.get('paths_up', 0)}/{totals.get('paths_known', 0)}"
                         if totals else "-")
                tunnel = str(m.status.get("state", "-"))
                if m.role == "router":
                    running = _dict(m.hello.get("client")).get("running")
                    tunnel = "client running" if running else "no client"
                    paths = f"v{m.hello.get('settings_version')}"
                out.append([m.role, m.name, m.state, tunnel, paths,
                            _rate(rates.get("rx_10s")), _rate(rates.get("tx_10s")),
                            _ago(now, m.last_seen), m.last_event or "-"])
            return out

    def render(self, now: float) -> str:
        header = ["ROLE", "NAME", "MQTT", "TUNNEL", "PATHS", "RX Mbit/s", "TX Mbit/s",
                  "SEEN", "LAST EVENT"]
        rows = [header, *self.rows(now)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in rows)


# --------------------------------------------------------------------------- the command


def run_fleet(mqtt: MqttSettings, key: Ed25519PrivateKey, settings_dir: Path, *,
              watch: bool, validity: float, stopping: threading.Event,
              refresh: float = 2.0) -> int:
    view = FleetView()
    link = BrokerLink(mqtt, f"ratbond-fleet-{mqtt.name}-{os.getpid()}",
                      subscriptions=topics.FLEET_SUBSCRIPTIONS,
                      on_message=lambda t, p: view.update(t, p, time.time()))
    controller = FleetController(key, settings_dir, link.outbox.put, validity=validity)
    link.start()
    log.info("serving settings from %s to %s", settings_dir, mqtt.address)
    next_scan = 0.0
    try:
        while not stopping.is_set():
            now = time.monotonic()
            if now >= next_scan:
                controller.scan()
                next_scan = now + SCAN_INTERVAL_S
            if watch:
                print("\x1b[H\x1b[2J" + view.render(time.time()), flush=True)
            stopping.wait(refresh)
    finally:
        link.stop()
    return 0
