"""The versioned status model: what ``/status.json`` serves and ``ratbond status`` reads.

The runtime's snapshot is a loose dict whose keys grow as the cores learn to count more; this
module turns it into frozen dataclasses holding only fields it knows, each coerced to its type
(anything else becomes ``None``, which every view shows as a dash). Whitelisting is deliberate:
a key the model does not name never reaches any view, so a secret that slipped into a snapshot
by mistake is not published.  ``to_dict``/``from_dict`` give the JSON shape documented in
``docs/status.md``; bump :data:`SCHEMA_VERSION` when a field changes meaning or goes away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1

#: Counter, drop and reorder names are identifiers chosen by our code; anything else is dropped.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_MAX_TEXT = 128
_MAX_ITEMS = 256
_MAX_INT = 1 << 64  # counters are 64-bit at most; beyond is garbage (and no float holds it)

UP = "up"
DEGRADED = "degraded"
DOWN = "down"


# ----------------------------------------------------------------------------- coercion


def as_int(value: object) -> int | None:
    """An integer, or None for anything that is not a finite number (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    result = int(value)
    return result if abs(result) < _MAX_INT else None


def as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return result if math.isfinite(result) else None


def as_rtt(value: object) -> float | None:
    """An RTT in ms; the cores report 0 for "not measured" (a down path), which is no RTT."""
    rtt = as_float(value)
    return rtt if rtt is not None and rtt > 0 else None


def as_text(value: object) -> str | None:
    """Short printable text; numbers are accepted (a session id may come as an int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = "".join(ch for ch in value[:_MAX_TEXT] if ch.isprintable())
    return text or None


def as_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _numbers(value: object, *, floats: bool = False) -> dict[str, float]:
    """Named numbers from a mapping: names must look like identifiers, values like numbers."""
    out: dict[str, float] = {}
    for name, raw in sorted(_mapping(value).items(), key=lambda item: str(item[0])):
        if len(out) >= _MAX_ITEMS:
            break
        number = as_float(raw) if floats else as_int(raw)
        if isinstance(name, str) and _NAME.match(name) and number is not None:
            out[name] = number
    return out


def _texts(value: object) -> dict[str, str]:
    """Name -> short text (the client's WANs and their addresses)."""
    out: dict[str, str] = {}
    for name, raw in sorted(_mapping(value).items(), key=lambda item: str(item[0])):
        key, text = as_text(name), as_text(raw)
        if len(out) < _MAX_ITEMS and isinstance(name, str) and key and text:
            out[key] = text
    return out


def _counts(value: object) -> dict[str, int]:
    return {name: int(number) for name, number in _numbers(value).items()}


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class Rates:
    """Bytes per second over the last 1 s and 10 s (None until two samples exist)."""

    tx_1s: float | None = None
    rx_1s: float | None = None
    tx_10s: float | None = None
    rx_10s: float | None = None


@dataclass(frozen=True, slots=True)
class PathStatus:
    """One path as the views show it; ``key`` is unique across sessions."""

    key: str
    path_id: int
    session: str | None = None
    wan: str | None = None
    state: str = "unknown"
    since_s: float | None = None
    down_reason: str | None = None
    local: str | None = None
    remote: str | None = None
    rtt_ms: float | None = None
    min_rtt_ms: float | None = None
    hello_rtt_ms: float | None = None
    loss: float | None = None
    capacity_bps: float | None = None
    tx_rate_bps: float | None = None
    rx_rate_bps: float | None = None
    tx_packets: int | None = None
    rx_packets: int | None = None
    tx_bytes: int | None = None
    rx_bytes: int | None = None
    retransmits: int | None = None
    restarts: int | None = None
    tx_errors: int | None = None
    inflight: int | None = None
    waitsnd: int | None = None
    queue_limit: int | None = None
    window: int | None = None  # segments the rate controller lets be in flight
    rate_phase: str | None = None  # startup, drain or probe (see ratbond.bond.rate)
    last_heard_ago_s: float | None = None
    rates: Rates = field(default_factory=Rates)

    @property
    def up(self) -> bool:
        return self.state == UP


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """How datagrams are protected: mode ``encrypted`` / ``authenticated`` / ``plaintext``."""

    mode: str | None = None
    cipher: str | None = None
    rekeys: int | None = None


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    """The TUN device (its name is None until the server's first client arrives)."""

    device: str | None = None
    tunnel_id: int | None = None
    address: str | None = None
    mtu: int | None = None
    default_route: bool | None = None


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """One client session on the server (the client has none of these)."""

    session: str
    client: str | None = None
    age_s: float | None = None
    active: bool | None = None
    balance: str | None = None
    paths: tuple[str, ...] = ()
    drops: dict[str, int] = field(default_factory=dict)
    reorder: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """One client of a server with a clients file: its TUN, session and drops."""

    name: str
    device: str | None = None
    tunnel_id: int | None = None
    address: str | None = None
    state: str = DOWN
    session: str | None = None
    paths_up: int = 0
    paths_total: int = 0
    routes: tuple[str, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Totals:
    paths_known: int = 0
    paths_up: int = 0
    rates: Rates = field(default_factory=Rates)


@dataclass(frozen=True, slots=True)
class StatusModel:
    """Everything the dashboard, the text view, ``ratbond status`` and the metrics show."""

    schema_version: int = SCHEMA_VERSION
    role: str | None = None
    version: str | None = None
    uptime_s: float | None = None
    state: str = DOWN
    session: str | None = None
    server: str | None = None
    listen: str | None = None
    balance: str | None = None
    channel: ChannelStatus = field(default_factory=ChannelStatus)
    tunnel: TunnelStatus = field(default_factory=TunnelStatus)
    totals: Totals = field(default_factory=Totals)
    paths: tuple[PathStatus, ...] = ()
    sessions: tuple[SessionStatus, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    reorder: dict[str, float] = field(default_factory=dict)
    wans: dict[str, str] = field(default_factory=dict)
    clients: tuple[ClientStatus, ...] = ()  # server with --clients: one per client


# ----------------------------------------------------------------------------- from a snapshot


def clients_from(value: object) -> tuple[ClientStatus, ...]:
    """The server's per-client blocks (``--clients``), as the runtime or the JSON gives them."""
    out = []
    for row in value[:_MAX_ITEMS * 16] if isinstance(value, (list, tuple)) else ():
        if not isinstance(row, Mapping):
            continue
        name = as_text(row.get("name"))
        if name is None:
            continue
        tunnel, paths = _mapping(row.get("tunnel")), _mapping(row.get("paths"))
        routes = tunnel.get("routes", row.get("routes"))
        out.append(ClientStatus(
            name=name, device=as_text(tunnel.get("device", row.get("device"))),
            tunnel_id=as_int(tunnel.get("tunnel_id", row.get("tunnel_id"))),
            address=as_text(tunnel.get("address", row.get("address"))),
            state=as_text(row.get("state")) or DOWN, session=as_text(row.get("session")),
            paths_up=as_int(paths.get("up", row.get("paths_up"))) or 0,
            paths_total=as_int(paths.get("total", row.get("paths_total"))) or 0,
            routes=tuple(t for t in (as_text(r) for r in routes) if t)
            if isinstance(routes, (list, tuple)) else (),
            counters=_counts(row.get("counters")), drops=_counts(row.get("drops"))))
    return tuple(sorted(out, key=lambda c: c.name))


def tunnel_label(tunnel: TunnelStatus) -> str:
    """The TUN's name, or the name it will get (``tun<id>``) before it exists."""
    if tunnel.device:
        return tunnel.device
    return f"tun{tunnel.tunnel_id}" if tunnel.tunnel_id is not None else ""


def path_key(session: str | None, path_id: int) -> str:
    """Path ids repeat across sessions on the server, so the session is part of the key."""
    return f"{session}/{path_id}" if session else str(path_id)


def raw_path_key(raw: Mapping[str, Any]) -> str | None:
    """The key of a snapshot's path row, or None when the row has no usable path id."""
    path_id = as_int(raw.get("path_id"))
    return None if path_id is None else path_key(as_text(raw.get("session")), path_id)


def overall_state(paths: tuple[PathStatus, ...]) -> str:
    """up: every known path up; degraded: some; down: none (or no path known)."""
    up = sum(1 for p in paths if p.up)
    if up == 0:
        return DOWN
    return UP if up == len(paths) else DEGRADED


def channel_from(value: object) -> ChannelStatus:
    """The structured form, or the server's older string ("encrypted, aes-256-gcm")."""
    if isinstance(value, str):
        mode, _, cipher = value.partition(",")
        return ChannelStatus(mode=as_text(mode.strip().lower()), cipher=as_text(cipher.strip()))
    raw = _mapping(value)
    return ChannelStatus(mode=as_text(raw.get("mode")), cipher=as_text(raw.get("cipher")),
                         rekeys=as_int(raw.get("rekeys")))


def tunnel_from(value: object) -> TunnelStatus:
    raw = _mapping(value)
    return TunnelStatus(device=as_text(raw.get("device")), tunnel_id=as_int(raw.get("tunnel_id")),
                        address=as_text(raw.get("address")),
                        mtu=as_int(raw.get("mtu")), default_route=as_bool(raw.get("default_route")))


def rates_from(value: object) -> Rates:
    raw = _mapping(value)
    return Rates(*(as_float(raw.get(f.name)) for f in fields(Rates)))


_PATH_INTS = ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "retransmits", "restarts",
              "tx_errors", "inflight", "waitsnd", "queue_limit", "window")
_PATH_FLOATS = ("since_s", "min_rtt_ms", "hello_rtt_ms", "loss", "capacity_bps",
                "tx_rate_bps", "rx_rate_bps", "last_heard_ago_s")
_PATH_TEXTS = ("wan", "down_reason", "local", "remote", "rate_phase")


def path_from(raw: Mapping[str, Any], rates: Rates | None = None,
              since_s: float | None = None) -> PathStatus | None:
    """A path row of the snapshot (or of ``to_dict`` output); None when it has no path id.

    ``rtt_ms`` is the smoothed RTT: the snapshot calls it ``srtt_ms``, the model ``rtt_ms``.
    """
    path_id = as_int(raw.get("path_id"))
    if path_id is None:
        return None
    session = as_text(raw.get("session"))
    rtt = as_rtt(raw.get("srtt_ms") if "srtt_ms" in raw else raw.get("rtt_ms"))
    given_since = as_float(raw.get("since_s"))
    values: dict[str, Any] = {name: as_int(raw.get(name)) for name in _PATH_INTS}
    values.update({name: as_float(raw.get(name)) for name in _PATH_FLOATS})
    values.update({name: as_rtt(raw.get(name)) for name in ("min_rtt_ms", "hello_rtt_ms")})
    values.update({name: as_text(raw.get(name)) for name in _PATH_TEXTS})
    values["since_s"] = given_since if given_since is not None else since_s
    return PathStatus(
        key=path_key(session, path_id), path_id=path_id, session=session,
        state=as_text(raw.get("state")) or "unknown", rtt_ms=rtt,
        rates=rates if rates is not None else rates_from(raw.get("rates")), **values)


def sessions_from(value: object, paths: tuple[PathStatus, ...]) -> tuple[SessionStatus, ...]:
    """The server's sessions, as a list of rows or today's dict keyed by session id."""
    rows: list[Mapping[str, Any]] = []
    if isinstance(value, Mapping):
        rows = [{"session": sid, **_mapping(row)} for sid, row in value.items()]
    elif isinstance(value, (list, tuple)):
        rows = [row for row in value if isinstance(row, Mapping)]
    out = []
    for row in rows[:_MAX_ITEMS]:
        sid = as_text(row.get("session"))
        if sid is None:
            continue
        out.append(SessionStatus(
            session=sid, client=as_text(row.get("client")), age_s=as_float(row.get("age_s")),
            active=as_bool(row.get("active")), balance=as_text(row.get("balance")),
            paths=tuple(p.key for p in paths if p.session == sid),
            drops=_counts(row.get("drops")), reorder=_numbers(row.get("reorder"), floats=True)))
    return tuple(sorted(out, key=lambda s: (not s.active, s.session)))


def totals_from(paths: tuple[PathStatus, ...]) -> Totals:
    """Sums of the per-path rates; a rate stays None until some path has one."""

    def total(name: str) -> float | None:
        values = [getattr(p.rates, name) for p in paths]
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    return Totals(paths_known=len(paths), paths_up=sum(1 for p in paths if p.up),
                  rates=Rates(*(total(f.name) for f in fields(Rates))))


def build_model(snap: Mapping[str, Any], rates: Mapping[str, Rates] | None = None,
                since: Mapping[str, float] | None = None) -> StatusModel:
    """The model of one runtime snapshot, with rates and state ages the sampler derived
    (by path key); never raises on a malformed snapshot."""
    rates = rates or {}
    since = since or {}
    paths: list[PathStatus] = []
    seen: set[str] = set()
    raw_paths = snap.get("paths")
    for raw in raw_paths if isinstance(raw_paths, (list, tuple)) else ():
        if not isinstance(raw, Mapping) or len(paths) >= _MAX_ITEMS:
            continue
        key = raw_path_key(raw)
        if key is None or key in seen:
            continue
        seen.add(key)
        path = path_from(raw, rates.get(key, Rates()), since.get(key))
        if path is not None:
            paths.append(path)
    ordered = tuple(sorted(paths, key=lambda p: (p.session or "", p.path_id)))
    return StatusModel(
        role=as_text(snap.get("role")), version=as_text(snap.get("version")),
        uptime_s=as_float(snap.get("uptime_s")), state=overall_state(ordered),
        session=as_text(snap.get("session")), server=as_text(snap.get("server")),
        listen=as_text(snap.get("listen")), balance=as_text(snap.get("balance")),
        channel=channel_from(snap.get("channel")), tunnel=tunnel_from(snap.get("tunnel")),
        totals=totals_from(ordered), paths=ordered,
        sessions=sessions_from(snap.get("sessions"), ordered),
        counters=_counts(snap.get("counters")), drops=_counts(snap.get("drops")),
        reorder=_numbers(snap.get("reorder"), floats=True), wans=_texts(snap.get("wans")),
        clients=clients_from(snap.get("clients")))


# ----------------------------------------------------------------------------- JSON


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return value


def to_dict(model: StatusModel) -> dict[str, Any]:
    """The JSON shape of ``/status.json`` (plain dicts, lists and scalars)."""
    result: dict[str, Any] = _plain(model)
    return result


def from_dict(data: Mapping[str, Any]) -> StatusModel:
    """Parse ``/status.json`` (this version or a newer one: unknown keys are ignored).

    Derived fields (``state``, ``totals``' path counts, sessions' path lists) are recomputed
    from the paths, so a reader never trusts a summary that contradicts the rows.
    """
    paths = []
    raw_paths = data.get("paths")
    for raw in raw_paths if isinstance(raw_paths, list) else ():
        if isinstance(raw, Mapping):
            path = path_from(raw, rates_from(raw.get("rates")))
            if path is not None:
                paths.append(path)
    ordered = tuple(paths)
    totals = _mapping(data.get("totals"))
    return StatusModel(
        schema_version=as_int(data.get("schema_version")) or 0,
        role=as_text(data.get("role")), version=as_text(data.get("version")),
        uptime_s=as_float(data.get("uptime_s")), state=overall_state(ordered),
        session=as_text(data.get("session")), server=as_text(data.get("server")),
        listen=as_text(data.get("listen")), balance=as_text(data.get("balance")),
        channel=channel_from(data.get("channel")), tunnel=tunnel_from(data.get("tunnel")),
        totals=Totals(paths_known=len(ordered), paths_up=sum(1 for p in ordered if p.up),
                      rates=rates_from(totals.get("rates"))),
        paths=ordered, sessions=sessions_from(data.get("sessions"), ordered),
        counters=_counts(data.get("counters")), drops=_counts(data.get("drops")),
        reorder=_numbers(data.get("reorder"), floats=True), wans=_texts(data.get("wans")),
        clients=clients_from(data.get("clients")))
