"""Prometheus exposition of the status model, built afresh on every scrape.

Counters (things that only grow, even if a path restart resets them) are counters, everything
else a gauge; units are Prometheus' base units (seconds, bytes).  A family with no sample is
not exported at all, so a dashboard never shows a metric that silently has no data.
Labels: ``tunnel`` (the TUN device), ``path``, ``wan``; on the server also ``session`` and
``client``, because one server carries several clients' paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ratbond.status.model import PathStatus, StatusModel, tunnel_label

# model field -> (metric name, help, scale)
_PATH_COUNTERS = {
    "tx_packets": ("ratbond_path_tx_packets", "IP packets sent on the path", 1.0),
    "rx_packets": ("ratbond_path_rx_packets", "IP packets received on the path", 1.0),
    "tx_bytes": ("ratbond_path_tx_bytes", "bytes of IP packets sent on the path", 1.0),
    "rx_bytes": ("ratbond_path_rx_bytes", "bytes of IP packets received on the path", 1.0),
    "retransmits": ("ratbond_path_retransmits", "KCP segments sent again", 1.0),
    "restarts": ("ratbond_path_restarts", "fresh KCP sessions after the path came back", 1.0),
    "tx_errors": ("ratbond_path_tx_errors", "socket send errors on the path", 1.0),
}
_PATH_GAUGES = {
    "rtt_ms": ("ratbond_path_rtt_seconds", "smoothed round-trip time", 0.001),
    "min_rtt_ms": ("ratbond_path_min_rtt_seconds", "minimum round-trip time", 0.001),
    "hello_rtt_ms": ("ratbond_path_hello_rtt_seconds", "RTT of the last HELLO exchange", 0.001),
    "loss": ("ratbond_path_loss_ratio", "estimated loss (0..1)", 1.0),
    "capacity_bps": ("ratbond_path_capacity_bytes_per_second", "capacity estimate", 1 / 8),
    "inflight": ("ratbond_path_inflight_segments", "KCP segments in flight", 1.0),
    "waitsnd": ("ratbond_path_queue_segments", "KCP segments queued or in flight", 1.0),
    "queue_limit": ("ratbond_path_queue_limit_segments", "current bound on the queue", 1.0),
    "last_heard_ago_s": ("ratbond_path_last_heard_seconds", "seconds since the peer was heard",
                         1.0),
    "since_s": ("ratbond_path_state_seconds", "seconds in the current state", 1.0),
}


#: Names the model's free-form counters may not take (they would clash with the families here).
_RESERVED = ("info", "uptime", "tunnel_up", "paths_up", "paths_known", "rekeys", "drops")


def _counter_allowed(name: str) -> bool:
    return name not in _RESERVED and not name.startswith(("path_", "reorder_"))


def _reorder_is_gauge(name: str) -> bool:
    """Reorder counters only grow, except what is held right now and the current timeout."""
    return name.startswith("held") or name.endswith("_s")


def _reorder_name(name: str) -> str:
    if name.endswith("_s"):
        return f"ratbond_reorder_{name[:-2]}_seconds"
    return f"ratbond_reorder_{name}"


def _nonempty(families: Iterable[Metric]) -> Iterator[Metric]:
    return (f for f in families if f.samples)


class ModelCollector(Collector):
    """Reads the model through ``model_fn`` at scrape time."""

    def __init__(self, model_fn: Callable[[], StatusModel]) -> None:
        self._model = model_fn

    def collect(self) -> Iterator[Metric]:
        model = self._model()
        yield from _nonempty(tunnel_families(model))
        yield from _nonempty(path_families(model))
        yield from _nonempty(client_families(model))


def client_families(model: StatusModel) -> Iterator[Metric]:
    """A server with ``--clients``: per client (label ``client``) up, paths, packets, drops."""
    if not model.clients:
        return
    labels = ["client", "tunnel"]
    up = GaugeMetricFamily("ratbond_client_up", "1 while the client has a session with a "
                           "path up", labels=labels)
    paths = GaugeMetricFamily("ratbond_client_paths_up", "the client's paths up",
                              labels=labels)
    packets = CounterMetricFamily("ratbond_client_packets", "IP packets through the "
                                  "client's TUN, by direction (rx: from the client)",
                                  labels=[*labels, "direction"])
    drops = CounterMetricFamily("ratbond_client_drops", "the client's packets dropped, by "
                                "reason (spoofed_source: a source address it does not own)",
                                labels=[*labels, "reason"])
    for client in model.clients:
        base = [client.name, client.device or ""]
        up.add_metric(base, float(client.state == "up"))
        paths.add_metric(base, float(client.paths_up))
        packets.add_metric([*base, "rx"], float(client.counters.get("rx_packets", 0)))
        packets.add_metric([*base, "tx"], float(client.counters.get("tx_packets", 0)))
        for reason, count in sorted(client.drops.items()):
            drops.add_metric([*base, reason], float(count))
    yield from (up, paths, packets, drops)


def tunnel_families(model: StatusModel) -> Iterator[Metric]:
    tunnel = tunnel_label(model.tunnel)
    info = GaugeMetricFamily("ratbond_info", "ratbond build, role and channel",
                             labels=["role", "version", "channel", "cipher"])
    info.add_metric([model.role or "", model.version or "", model.channel.mode or "",
                     model.channel.cipher or ""], 1.0)
    yield info
    if model.uptime_s is not None:
        yield GaugeMetricFamily("ratbond_uptime_seconds", "seconds since start",
                                value=model.uptime_s)
    labels = ["tunnel"]
    for name, help_text, value in (
            ("ratbond_tunnel_up", "1 while at least one path is up",
             float(model.totals.paths_up > 0)),
            ("ratbond_paths_up", "paths up", float(model.totals.paths_up)),
            ("ratbond_paths_known", "paths known, up or not", float(model.totals.paths_known))):
        gauge = GaugeMetricFamily(name, help_text, labels=labels)
        gauge.add_metric([tunnel], value)
        yield gauge
    if model.channel.rekeys is not None:
        rekeys = CounterMetricFamily("ratbond_rekeys", "completed rekeys", labels=labels)
        rekeys.add_metric([tunnel], float(model.channel.rekeys))
        yield rekeys
    for name, count in model.counters.items():
        if not _counter_allowed(name):
            continue
        family = CounterMetricFamily(f"ratbond_{name}", name.replace("_", " "), labels=labels)
        family.add_metric([tunnel], float(count))
        yield family
    drops = CounterMetricFamily("ratbond_drops", "datagrams or packets dropped, by reason",
                                labels=["tunnel", "reason"])
    for reason, count in model.drops.items():
        drops.add_metric([tunnel, reason], float(count))
    yield drops
    yield from reorder_families(model, tunnel)


def reorder_families(model: StatusModel, tunnel: str) -> Iterator[Metric]:
    """The client's reorder buffer, or one per session on the server (label ``session``)."""
    rows: list[tuple[list[str], dict[str, float]]]
    if model.role == "server":
        labels = ["tunnel", "session"]
        rows = [([tunnel, s.session], s.reorder) for s in model.sessions]
    else:
        labels = ["tunnel"]
        rows = [([tunnel], model.reorder)]
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
    for values, reorder in rows:
        for name, number in reorder.items():
            metric = _reorder_name(name)
            family = families.get(metric)
            if family is None:
                text = f"reorder buffer: {name.replace('_', ' ')}"
                family = (GaugeMetricFamily(metric, text, labels=labels)
                          if _reorder_is_gauge(name)
                          else CounterMetricFamily(metric, text, labels=labels))
                families[metric] = family
            family.add_metric(values, float(number))
    yield from families.values()


def path_families(model: StatusModel) -> Iterator[Metric]:
    server = model.role == "server"
    labels = ["tunnel", "path", "wan"] + (["session", "client"] if server else [])
    clients = {s.session: s.client or "" for s in model.sessions}

    def values(path: PathStatus) -> list[str]:
        base = [tunnel_label(model.tunnel), str(path.path_id), path.wan or ""]
        if server:
            base += [path.session or "", clients.get(path.session or "", "")]
        return base

    up = GaugeMetricFamily("ratbond_path_up", "1 while the path is up (every known path)",
                           labels=labels)
    counters = {f: CounterMetricFamily(name, text, labels=labels)
                for f, (name, text, _scale) in _PATH_COUNTERS.items()}
    gauges = {f: GaugeMetricFamily(name, text, labels=labels)
              for f, (name, text, _scale) in _PATH_GAUGES.items()}
    for path in model.paths:
        row = values(path)
        up.add_metric(row, 1.0 if path.up else 0.0)
        for table, families in ((_PATH_COUNTERS, counters), (_PATH_GAUGES, gauges)):
            for field_name, family in families.items():
                value = getattr(path, field_name)
                if value is not None:
                    family.add_metric(row, float(value) * table[field_name][2])
    yield up
    yield from counters.values()
    yield from gauges.values()
