"""contrib/: the Grafana dashboard and the alert rules use only metrics and labels that
/metrics really exports (a rename in metrics.py without updating them fails here)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ratbond.status import StatusServer
from tests.unit.test_status_snapshots import CLIENT_SNAPSHOT, SERVER_SNAPSHOT

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
ADDED_BY_PROMETHEUS = {"instance", "job"}


def exported() -> tuple[set[str], set[str]]:
    """Sample names (with ``_total``) and label names of the fixtures' exposition."""
    names: set[str] = set()
    labels: set[str] = set(ADDED_BY_PROMETHEUS)
    for snapshot in (CLIENT_SNAPSHOT, SERVER_SNAPSHOT):
        text = StatusServer(functools.partial(dict, snapshot)).render("/metrics").body.decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                names.add(sample.name)
                labels.update(sample.labels)
    return names, labels


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bratbond_[a-z0-9_]+", expr))


def test_alert_rules_cover_the_issue_and_use_real_metrics() -> None:
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((CONTRIB / "prometheus" / "ratbond-alerts.yml").read_text())
    names, labels = exported()
    by_name: dict[str, Any] = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"RatbondPathDown", "RatbondAllPathsDown", "RatbondDropsRising"} <= set(by_name)
    assert by_name["RatbondPathDown"]["for"] == "1m"
    for name, rule in by_name.items():
        assert referenced(rule["expr"]) <= names, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        text = " ".join(rule["annotations"].values())
        assert set(re.findall(r"\$labels\.(\w+)", text)) <= labels, name


def test_grafana_dashboard_queries_real_metrics() -> None:
    dashboard = json.loads((CONTRIB / "grafana" / "ratbond-dashboard.json").read_text())
    names, labels = exported()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(exprs) > 10
    used: set[str] = set()
    for expr in exprs:
        used |= referenced(expr)
        assert referenced(expr) <= names, expr
        assert set(re.findall(r"by \(([a-z_]+)\)", expr)) <= labels, expr
    legends = " ".join(t["legendFormat"] for p in dashboard["panels"] for t in p["targets"])
    assert set(re.findall(r"\{\{(\w+)\}\}", legends)) <= labels
    for wanted in ("ratbond_path_up", "ratbond_path_rx_bytes_total", "ratbond_path_rtt_seconds",
                   "ratbond_path_capacity_bytes_per_second", "ratbond_drops_total"):
        assert wanted in used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
