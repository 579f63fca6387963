"""``ratbond fleet``: serves each router its signed settings and shows the fleet.

Settings come from ``DIR/<router-id>.toml`` (the client's config-file keys), are checked
with :mod:`ratbond.config`'s loaders before anything is signed, and are published retained
on ``ratbond/router/<id>/settings``.  A changed file gets the next version number (kept in
``DIR/.fleet-state.json``, so versions only grow across restarts); every document is
re-signed with a fresh expiry when half its validity has passed.  The view listens to every
end's status, state and hello topics and draws one table row per end (``--watch``); the same
rows are the page, ``/fleet.json`` and ``/metrics`` of :mod:`ratbond.mqtt.fleet_http`.
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


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 8 / 1e6:.2f}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


#: A member not heard for this long stands out even if its state still says online
#: (status comes every 5 s, a router's hello every 15 s by default).
STALE_AFTER_S = 60.0


@dataclass(frozen=True)
class MemberView:
    """One row of the fleet, as the table, ``/fleet.json`` and ``/metrics`` show it."""

    role: str
    name: str
    mqtt: str
    tunnel: str
    paths_up: int | None
    paths_known: int | None
    settings_version: int | None
    client_running: bool | None
    rx_bytes_per_second: float | None
    tx_bytes_per_second: float | None
    last_seen: float | None
    last_seen_ago_s: float | None
    events: int
    last_event: str

    @property
    def stale(self) -> bool:
        return self.last_seen_ago_s is None or self.last_seen_ago_s > STALE_AFTER_S

    @property
    def attention(self) -> bool:
        """Offline, silent for a while, or a path down: the row the page highlights."""
        paths_down = (self.paths_up is not None and self.paths_known is not None
                      and self.paths_up < self.paths_known)
        return self.mqtt != topics.ONLINE or self.stale or paths_down

    def cells(self) -> list[str]:
        if self.role == "router":
            paths = f"v{self.settings_version}"
        elif self.paths_up is None and self.paths_known is None:
            paths = "-"
        else:
            paths = f"{self.paths_up or 0}/{self.paths_known or 0}"
        return [self.role, self.name, self.mqtt, self.tunnel, paths,
                _rate(self.rx_bytes_per_second), _rate(self.tx_bytes_per_second),
                _ago(self.last_seen_ago_s), self.last_event or "-"]

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "mqtt": self.mqtt,
                "tunnel": self.tunnel, "paths_up": self.paths_up,
                "paths_known": self.paths_known, "settings_version": self.settings_version,
                "client_running": self.client_running,
                "rx_bytes_per_second": self.rx_bytes_per_second,
                "tx_bytes_per_second": self.tx_bytes_per_second,
                "last_seen": self.last_seen, "last_seen_ago_s": self.last_seen_ago_s,
                "events": self.events, "last_event": self.last_event or None,
                "stale": self.stale, "attention": self.attention}


def _member_view(m: Member, now: float) -> MemberView:
    totals = _dict(m.status.get("totals"))
    rates = _dict(totals.get("rates"))
    paths_up = paths_known = version = None
    running: bool | None = None
    tunnel = str(m.status.get("state", "-"))
    if totals:
        paths_up = _int(totals.get("paths_up")) or 0
        paths_known = _int(totals.get("paths_known")) or 0
    if m.role == "router":
        running = bool(_dict(m.hello.get("client")).get("running"))
        tunnel = "client running" if running else "no client"
        version = _int(m.hello.get("settings_version"))
        paths_up = paths_known = None
    ago = None if m.last_seen is None else round(max(0.0, now - m.last_seen), 3)
    return MemberView(m.role, m.name, m.state, tunnel, paths_up, paths_known, version, running,
                      _float(rates.get("rx_10s")), _float(rates.get("tx_10s")), m.last_seen,
                      ago, m.events, m.last_event)


HEADER = ["ROLE", "NAME", "MQTT", "TUNNEL", "PATHS", "RX Mbit/s", "TX Mbit/s", "SEEN",
          "LAST EVENT"]


class FleetView:
    """Every end seen on the status topics; fed from paho's thread, read from others (the
    ``--watch`` loop, the HTTP thread) through :meth:`snapshot`, a copy made under the lock,
    so a slow reader never holds up paho."""

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

    def snapshot(self, now: float) -> list[MemberView]:
        """Every member, sorted by role and name (immutable rows, safe to use unlocked)."""
        with self._lock:
            members = sorted(self.members.values(), key=lambda m: (m.role, m.name))
            return [_member_view(m, now) for m in members]

    def rows(self, now: float) -> list[list[str]]:
        return [m.cells() for m in self.snapshot(now)]

    def render(self, now: float, members: list[MemberView] | None = None) -> str:
        """The terminal table (``--watch``, ``/fleet.txt``)."""
        if members is None:
            members = self.snapshot(now)
        rows = [HEADER, *(m.cells() for m in members)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                         for r in rows)


# --------------------------------------------------------------------------- the command


def run_fleet(mqtt: MqttSettings, key: Ed25519PrivateKey, settings_dir: Path, *,
              watch: bool, validity: float, stopping: threading.Event,
              refresh: float = 2.0, http: tuple[str, int] | None = None,
              http_token: str | None = None) -> int:
    from ratbond.mqtt.fleet_http import FleetHttpThread, FleetServer

    view = FleetView()
    page: FleetHttpThread | None = None
    if http is not None:
        page = FleetHttpThread(FleetServer(view, token=http_token), *http)
        try:
            page.start()
        except OSError as exc:
            log.error("--http-listen-addr %s:%d: cannot listen: %s (choose another port, or "
                      "--http-listen-addr=disable)", http[0], http[1], exc.strerror or exc)
            return 1
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
        if page is not None:
            page.stop()
    return 0
