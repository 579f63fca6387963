"""Prometheus re-export of the fleet view: one scrape of the controller covers every end.

Built afresh on every scrape from one :meth:`FleetView.snapshot`, in the controller's own
registry (never the process-global one).  Labels ``role`` and ``name`` are the topic tree's
levels (``ratbond/<role>/<name>/…``).  As for ``ratbond.status.metrics``, units are base
units (seconds, bytes) and a family with no sample is not exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ratbond.mqtt import topics
from ratbond.mqtt.fleet import MemberView

LABELS = ["role", "name"]

# MemberView field -> (metric name, help)
_GAUGES = {
    "paths_up": ("ratbond_fleet_paths_up", "paths up, as the member last reported"),
    "paths_known": ("ratbond_fleet_paths_known", "paths known, up or not"),
    "rx_bytes_per_second": ("ratbond_fleet_rx_bytes_per_second",
                            "received through the tunnel, 10 s average"),
    "tx_bytes_per_second": ("ratbond_fleet_tx_bytes_per_second",
                            "sent through the tunnel, 10 s average"),
    "last_seen_ago_s": ("ratbond_fleet_last_seen_seconds",
                        "seconds since the member's last status, hello or event"),
    "settings_version": ("ratbond_fleet_settings_version",
                         "a router's running settings version"),
}


class FleetCollector(Collector):
    """Reads the members through ``members_fn`` (and the ignored count) at scrape time."""

    def __init__(self, members_fn: Callable[[], Sequence[MemberView]],
                 ignored_fn: Callable[[], int] = lambda: 0) -> None:
        self._members = members_fn
        self._ignored = ignored_fn

    def collect(self) -> Iterator[Metric]:
        members = list(self._members())
        yield GaugeMetricFamily("ratbond_fleet_members", "routers, clients and servers seen "
                                "on the status topics", value=float(len(members)))
        yield CounterMetricFamily("ratbond_fleet_ignored_messages", "messages on the status "
                                  "topics that were not a JSON object", value=self._ignored())
        up = GaugeMetricFamily("ratbond_fleet_member_up", "1 while the member's MQTT state is "
                               "online (0 after its clean stop or its last will)", labels=LABELS)
        gauges = {f: GaugeMetricFamily(name, text, labels=LABELS)
                  for f, (name, text) in _GAUGES.items()}
        for member in members:
            row = [member.role, member.name]
            up.add_metric(row, float(member.mqtt == topics.ONLINE))
            for field_name, family in gauges.items():
                value = getattr(member, field_name)
                if value is not None:
                    family.add_metric(row, float(value))
        yield from (f for f in (up, *gauges.values()) if f.samples)


def metrics_text(members: Sequence[MemberView], ignored: int = 0) -> bytes:
    """The exposition text for these members (one registry per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: members, lambda: ignored))
    return generate_latest(registry)
