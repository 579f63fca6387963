"""/metrics parses with prometheus-client's own parser, with the right types and labels."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ratbond.status import StatusServer
from tests.unit.test_status_snapshots import CLIENT_SNAPSHOT, SERVER_SNAPSHOT, fresh


def scrape(snapshot: dict[str, Any]) -> dict[str, Any]:
    response = StatusServer(lambda: snapshot).render("/metrics")
    assert response.status == 200
    return {f.name: f for f in text_string_to_metric_families(response.body.decode())}


def samples(families: dict[str, Any], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples
            if not s.name.endswith("_created")}


def test_client_metrics_types_units_and_labels() -> None:
    families = scrape(CLIENT_SNAPSHOT)
    assert families["ratbond_path_up"].type == "gauge"
    assert families["ratbond_path_tx_bytes"].type == "counter"
    assert families["ratbond_drops"].type == "counter"
    assert families["ratbond_reorder_late"].type == "counter"
    assert families["ratbond_reorder_held"].type == "gauge"
    assert families["ratbond_reorder_timeout_seconds"].type == "gauge"
    wan1 = (("path", "1"), ("tunnel", "tun660"), ("wan", "wan1"))
    wan2 = (("path", "2"), ("tunnel", "tun660"), ("wan", "wan2"))
    assert samples(families, "ratbond_path_up") == {wan1: 1.0, wan2: 0.0}
    assert samples(families, "ratbond_path_rtt_seconds")[wan1] == 0.041
    assert samples(families, "ratbond_path_capacity_bytes_per_second") == {wan1: 3_750_000.0}
    assert samples(families, "ratbond_path_loss_ratio") == {wan1: 0.001}
    assert samples(families, "ratbond_path_queue_segments")[wan2] == 5.0
    assert samples(families, "ratbond_path_tx_bytes")[wan2] == 5000.0
    assert samples(families, "ratbond_drops")[(("reason", "auth_failed"),
                                               ("tunnel", "tun660"))] == 3.0
    assert samples(families, "ratbond_rekeys") == {(("tunnel", "tun660"),): 31.0}
    assert samples(families, "ratbond_tun_rx_packets") == {(("tunnel", "tun660"),): 4096.0}
    assert samples(families, "ratbond_paths_up") == {(("tunnel", "tun660"),): 1.0}
    assert samples(families, "ratbond_tunnel_up") == {(("tunnel", "tun660"),): 1.0}


def test_no_family_without_samples() -> None:
    snap = fresh(CLIENT_SNAPSHOT)
    for path in snap["paths"]:  # what today's runtime gives: no loss, capacity, min RTT
        for key in ("loss", "capacity_bps", "min_rtt_ms", "since_s"):
            del path[key]
    del snap["reorder"], snap["channel"]
    families = scrape(snap)
    assert "ratbond_path_loss_ratio" not in families
    assert "ratbond_path_capacity_bytes_per_second" not in families
    assert "ratbond_rekeys" not in families
    assert not any(name.startswith("ratbond_reorder") for name in families)
    for family in families.values():
        assert family.samples, family.name
    assert families["ratbond_path_rtt_seconds"].samples  # srtt_ms is there: RTT is exported


def test_down_path_has_up_zero_and_all_paths_down_is_visible() -> None:
    snap = fresh(CLIENT_SNAPSHOT)
    for path in snap["paths"]:
        path["state"] = "down"
    families = scrape(snap)
    assert set(samples(families, "ratbond_path_up").values()) == {0.0}
    assert samples(families, "ratbond_tunnel_up") == {(("tunnel", "tun660"),): 0.0}
    assert len(samples(families, "ratbond_path_up")) == 2


def test_server_metrics_carry_session_and_client() -> None:
    families = scrape(SERVER_SNAPSHOT)
    up = samples(families, "ratbond_path_up")
    assert up[(("client", "203.0.113.7"), ("path", "2"), ("session", "0000abcd"),
               ("tunnel", "tun660"), ("wan", ""))] == 1.0
    assert up[(("client", ""), ("path", "1"), ("session", "00001111"),
               ("tunnel", "tun660"), ("wan", ""))] == 0.0
    assert len(up) == 3


def test_a_counter_named_like_a_family_is_not_exported_twice() -> None:
    snap = fresh(CLIENT_SNAPSHOT)
    snap["counters"]["drops"] = 5
    snap["counters"]["path_up"] = 1
    families = scrape(snap)
    assert families["ratbond_drops"].type == "counter"
    assert len(samples(families, "ratbond_drops")) == 3
    assert len(samples(families, "ratbond_path_up")) == 2


def test_tunnel_label_before_the_tun_exists_is_its_future_name() -> None:
    snap = {"role": "server", "tunnel": {"device": None, "tunnel_id": 661}, "paths": []}
    families = scrape(snap)
    assert samples(families, "ratbond_tunnel_up") == {(("tunnel", "tun661"),): 0.0}
    assert samples(families, "ratbond_paths_known") == {(("tunnel", "tun661"),): 0.0}
    assert "ratbond_path_up" not in families  # no path known: no sample, no family
