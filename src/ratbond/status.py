"""The status endpoint: one snapshot of the counters rendered as JSON, Prometheus text or HTML.

The runtime hands over a function returning a plain snapshot dict; this module only renders
it, so what the page shows is always what the core counted.  Snapshot shape::

    {"role": "client", "version": "...", "uptime_s": 12.3, "session": 7 | None,
     "tunnel": {"device": "tun660", "address": "10.10.10.2/30", ...},
     "counters": {"tun_rx_packets": 5, ...},          # monotonically increasing
     "drops": {"auth_failed": 0, ...},                 # by reason
     "paths": [{"path_id": 1, "wan": "wan1", "state": "up", "local": "...",
                "remote": "...", "srtt_ms": 41, "rtt_ms": 40.2, "tx_packets": 10, ...}]}

Endpoints: ``/`` and ``/status`` (HTML page), ``/status.json``, ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

Snapshot = dict[str, Any]
SnapshotFn = Callable[[], Snapshot]

log = logging.getLogger("ratbond.status")

# Path fields that only ever grow are exported as Prometheus counters; the rest as gauges.
_PATH_COUNTERS = ("tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "retransmits")
_PATH_GAUGES = ("srtt_ms", "rto_ms", "rtt_ms", "inflight", "waitsnd", "last_heard_s")
_MAX_REQUEST = 8192


class SnapshotCollector(Collector):
    """Prometheus view of the snapshot, built afresh on every scrape."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        role = str(snap.get("role", ""))
        info = GaugeMetricFamily("ratbond_info", "ratbond build and role", labels=["role",
                                                                                  "version"])
        info.add_metric([role, str(snap.get("version", ""))], 1)
        yield info
        yield GaugeMetricFamily("ratbond_uptime_seconds", "seconds since start",
                                value=float(snap.get("uptime_s", 0.0)))
        paths = snap.get("paths", [])
        yield GaugeMetricFamily("ratbond_paths_up", "paths currently up",
                                value=sum(1 for p in paths if p.get("state") == "up"))
        for name, value in sorted(snap.get("counters", {}).items()):
            yield CounterMetricFamily(f"ratbond_{name}", f"{name.replace('_', ' ')}",
                                      value=float(value))
        drops = CounterMetricFamily("ratbond_drops", "datagrams or packets dropped, by reason",
                                    labels=["reason"])
        for reason, count in sorted(snap.get("drops", {}).items()):
            drops.add_metric([reason], float(count))
        yield drops
        labels = ["path", "wan"]
        up = GaugeMetricFamily("ratbond_path_up", "1 while the path is up", labels=labels)
        counters = {f: CounterMetricFamily(f"ratbond_path_{f}", f"per-path {f}", labels=labels)
                    for f in _PATH_COUNTERS}
        gauges = {f: GaugeMetricFamily(f"ratbond_path_{f}", f"per-path {f}", labels=labels)
                  for f in _PATH_GAUGES}
        for path in paths:
            values = [str(path.get("path_id", "")), str(path.get("wan", ""))]
            up.add_metric(values, 1.0 if path.get("state") == "up" else 0.0)
            for field, family in counters.items():
                if path.get(field) is not None:
                    family.add_metric(values, float(path[field]))
            for field, gauge in gauges.items():
                if path.get(field) is not None:
                    gauge.add_metric(values, float(path[field]))
        yield up
        yield from counters.values()
        yield from gauges.values()


def render_json(snap: Snapshot) -> bytes:
    return json.dumps(snap, indent=2, sort_keys=True, default=str).encode()


def render_html(snap: Snapshot) -> bytes:
    """A small self-refreshing page: paths first, then counters and drops."""
    esc = html.escape
    paths = snap.get("paths", [])
    columns = sorted({key for path in paths for key in path} - {"path_id", "wan", "state"})
    head = "".join(f"<th>{esc(c)}</th>" for c in ["path", "wan", "state", *columns])
    rows = []
    for path in paths:
        state = str(path.get("state", ""))
        cells = [str(path.get("path_id", "")), str(path.get("wan", "")), state]
        cells += [_fmt(path.get(c)) for c in columns]
        cls = "up" if state == "up" else "down"
        rows.append(f"<tr class='{cls}'>" + "".join(f"<td>{esc(c)}</td>" for c in cells)
                    + "</tr>")

    def table(title: str, mapping: dict[str, Any]) -> str:
        body = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(_fmt(v))}</td></tr>"
                       for k, v in sorted(mapping.items()))
        return f"<h2>{esc(title)}</h2><table>{body}</table>"

    summary = {k: v for k, v in snap.items() if not isinstance(v, (dict, list))}
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' "
        "content='2'><title>ratbond status</title><style>body{font-family:sans-serif}"
        "td,th{padding:2px 8px;text-align:right}tr.up td{background:#dfd}"
        "tr.down td{background:#fdd}</style></head><body>"
        f"<h1>ratbond {esc(str(snap.get('role', '')))}</h1>"
        + table("summary", summary)
        + table("tunnel", snap.get("tunnel", {}))
        + f"<h2>paths</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
        + table("counters", snap.get("counters", {}))
        + table("drops", snap.get("drops", {}))
        + "<p><a href='/status.json'>json</a> · <a href='/metrics'>metrics</a></p>"
        "</body></html>"
    )
    return page.encode()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return "" if value is None else str(value)


class StatusServer:
    """A tiny HTTP/1.0 server on the runtime's event loop (no thread, no framework)."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(snapshot))
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port,
                                                  limit=_MAX_REQUEST)
        log.info("status page on http://%s:%d/status", host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def render(self, path: str) -> tuple[int, str, bytes]:
        """Status code, content type and body for a request path."""
        route = path.split("?", 1)[0]
        if route in ("/", "/status"):
            return 200, "text/html; charset=utf-8", render_html(self._snapshot())
        if route == "/status.json":
            return 200, "application/json", render_json(self._snapshot())
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            parts = request.split(b"\r\n", 1)[0].split()
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                status, ctype, body = 400, "text/plain", b"bad request\n"
            else:
                status, ctype, body = self.render(parts[1].decode("ascii", "replace"))
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
            head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head + (b"" if parts[:1] == [b"HEAD"] else body))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
