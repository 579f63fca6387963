"""A server with a clients file: per-client blocks in /status.json, the text view, /metrics."""

from __future__ import annotations

import json
from typing import Any

from ratbond.status import StatusServer
from ratbond.status.model import build_model, from_dict, to_dict
from ratbond.status.text import render_text
from tests.unit.test_status_snapshots import SERVER_SNAPSHOT, fresh


def with_clients() -> dict[str, Any]:
    snap = fresh(SERVER_SNAPSHOT)
    snap["clients"] = [
        {"name": "site2", "tunnel": {"device": "tun702", "tunnel_id": 702,
                                     "address": "10.20.2.2/30", "routes": []},
         "state": "down", "session": None, "paths": {"total": 0, "up": 0},
         "counters": {"rx_packets": 0, "tx_packets": 0}, "drops": {"spoofed_source": 0}},
        {"name": "site1", "tunnel": {"device": "tun701", "tunnel_id": 701,
                                     "address": "10.20.1.2/30", "routes": ["192.168.1.0/24"]},
         "state": "up", "session": "9e0bfc1e", "paths": {"total": 2, "up": 2},
         "counters": {"rx_packets": 1234, "tx_packets": 987},
         "drops": {"spoofed_source": 17, "tx_no_session": 3}},
        {"tunnel": {}},  # no name: ignored, never raises
    ]
    return snap


def test_client_blocks_map_onto_the_model_and_survive_json() -> None:
    model = build_model(with_clients())
    assert [c.name for c in model.clients] == ["site1", "site2"]
    site1 = model.clients[0]
    assert (site1.device, site1.tunnel_id, site1.state, site1.paths_up, site1.paths_total) == (
        "tun701", 701, "up", 2, 2)
    assert site1.routes == ("192.168.1.0/24",) and site1.drops["spoofed_source"] == 17
    assert from_dict(json.loads(json.dumps(to_dict(model)))).clients == model.clients
    assert build_model(fresh(SERVER_SNAPSHOT)).clients == ()


def test_text_view_has_a_line_per_client() -> None:
    text = render_text(build_model(with_clients()))
    line1 = next(line for line in text.splitlines() if line.startswith("site1"))
    assert "tun701" in line1 and " up " in line1 and "2/2" in line1 and line1.endswith("17")
    assert any(line.startswith("site2") and "down" in line for line in text.splitlines())
    assert "client " not in render_text(build_model(fresh(SERVER_SNAPSHOT))).split("\n")[2]


def test_metrics_are_labelled_by_client() -> None:
    body = StatusServer(with_clients).render("/metrics").body.decode()
    assert 'ratbond_client_up{client="site1",tunnel="tun701"} 1.0' in body
    assert 'ratbond_client_up{client="site2",tunnel="tun702"} 0.0' in body
    assert ('ratbond_client_drops_total{client="site1",reason="spoofed_source",'
            'tunnel="tun701"} 17.0') in body
    assert 'ratbond_client_packets_total{client="site1",direction="rx",tunnel="tun701"} 1234.0' \
        in body
    plain = StatusServer(lambda: fresh(SERVER_SNAPSHOT)).render("/metrics").body.decode()
    assert "ratbond_client_up" not in plain
