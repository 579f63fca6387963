"""Recorded runtime snapshots (today's shape plus the fields the cores are adding) that the
status tests share, and the model built from them."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from ratbond.status import StatusServer
from ratbond.status.model import (
    DEGRADED,
    DOWN,
    UP,
    ChannelStatus,
    Rates,
    build_model,
    from_dict,
    to_dict,
)


def _path(path_id: int, wan: str, state: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path_id": path_id, "state": state, "epoch": 1, "srtt_ms": 41, "rto_ms": 200,
        "hello_rtt_ms": 40, "tx_packets": 1000, "tx_bytes": 1_200_000, "rx_packets": 2000,
        "rx_bytes": 2_400_000, "peer_rx_packets": 990, "retransmits": 12, "inflight": 3,
        "waitsnd": 5, "queue_limit": 64, "rate_pps": 812.5, "restarts": 0,
        "last_heard_ago_s": 0.2, "down_reason": None, "wan": wan, "local": "192.168.1.2",
        "tx_errors": 0, "capacity_bps": 30_000_000.0, "tx_rate_bps": 1_000_000.0,
        "rx_rate_bps": 20_000_000.0, "min_rtt_ms": 40.2, "loss": 0.001, "since_s": 125.0,
    }
    row.update(extra)
    return row


CLIENT_SNAPSHOT: dict[str, Any] = {
    "role": "client",
    "version": "0.1.0",
    "uptime_s": 3725.4,
    "session": "0000abcd",
    "server": "vps.example.net:12345",
    "balance": "consistent",
    "channel": {"mode": "encrypted", "cipher": "chacha20-poly1305", "rekeys": 31},
    "tunnel": {"device": "tun660", "tunnel_id": 660, "address": "10.10.10.1/30", "mtu": 1391,
               "default_route": True},
    "wans": {"wan1": "192.168.1.2", "wan2": "192.168.2.2"},
    "counters": {"rx_datagrams": 5120, "tun_rx_packets": 4096, "tun_tx_packets": 4000},
    "drops": {"auth_failed": 3, "bond_queue_full": 0, "replayed": 1},
    "reorder": {"held": 0, "held_bytes": 0, "late": 2, "duplicates": 1, "timeout_s": 0.025},
    "paths": [
        _path(1, "wan1", "up"),
        _path(2, "wan2", "down", srtt_ms=0, hello_rtt_ms=None, down_reason="silent",
              since_s=4.0, capacity_bps=None, loss=None, min_rtt_ms=None, tx_bytes=5000,
              rx_bytes=7000, local="192.168.2.2"),
    ],
}

SERVER_SNAPSHOT: dict[str, Any] = {
    "role": "server",
    "version": "0.1.0",
    "uptime_s": 90061.0,
    "listen": "0.0.0.0:12345",
    "channel": "encrypted, aes-256-gcm",
    "session": "0000abcd",
    "sessions": {"0000abcd": {"age_s": 61.5, "active": True, "client": "203.0.113.7"},
                 "00001111": {"age_s": 3.0, "active": False}},
    "tunnel": {"device": "tun660", "address": "10.10.10.2/30", "mtu": 1391},
    "counters": {"tun_rx_packets": 10},
    "drops": {"bond_late": 0},
    "paths": [
        {**_path(1, "", "up"), "session": "0000abcd", "remote": "203.0.113.7:40001"},
        {**_path(2, "", "up"), "session": "0000abcd", "remote": "198.51.100.9:40002"},
        {**_path(1, "", "down", down_reason="linkdown"), "session": "00001111",
         "remote": None},
    ],
}


def fresh(snapshot: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(snapshot)


def test_client_snapshot_maps_onto_the_model() -> None:
    model = build_model(CLIENT_SNAPSHOT)
    assert model.schema_version == 1
    assert model.state == DEGRADED
    assert (model.totals.paths_known, model.totals.paths_up) == (2, 1)
    assert model.channel == ChannelStatus("encrypted", "chacha20-poly1305", 31)
    up, down = model.paths
    assert (up.key, up.rtt_ms, up.min_rtt_ms, up.capacity_bps) == ("1", 41.0, 40.2, 3e7)
    assert (down.state, down.down_reason, down.since_s, down.loss) == ("down", "silent", 4.0,
                                                                       None)
    assert down.rtt_ms is None  # the core's srtt_ms 0 of a down path means "not measured"
    assert model.reorder["late"] == 2 and model.reorder["timeout_s"] == 0.025
    assert model.drops == {"auth_failed": 3, "bond_queue_full": 0, "replayed": 1}


def test_server_sessions_group_paths_and_old_channel_string_is_understood() -> None:
    model = build_model(SERVER_SNAPSHOT)
    assert model.channel == ChannelStatus("encrypted", "aes-256-gcm", None)
    assert [p.key for p in model.paths] == ["00001111/1", "0000abcd/1", "0000abcd/2"]
    active, other = model.sessions
    assert (active.session, active.active, active.client) == ("0000abcd", True, "203.0.113.7")
    assert active.paths == ("0000abcd/1", "0000abcd/2")
    assert other.paths == ("00001111/1",) and other.client is None
    # the list form the runtime may switch to gives the same sessions
    as_list = fresh(SERVER_SNAPSHOT)
    as_list["sessions"] = [{"session": k, **v} for k, v in SERVER_SNAPSHOT["sessions"].items()]
    assert build_model(as_list).sessions == model.sessions


def test_model_round_trips_through_json() -> None:
    rates = {"1": Rates(100.0, 200.0, 150.5, None)}
    for snapshot in (CLIENT_SNAPSHOT, SERVER_SNAPSHOT):
        model = build_model(snapshot, rates, {"2": 9.0})
        data = to_dict(model)
        again = from_dict(json.loads(json.dumps(data)))
        assert again == model
        assert to_dict(again) == data
    assert build_model(CLIENT_SNAPSHOT, rates).totals.rates == Rates(100.0, 200.0, 150.5, None)


def test_missing_and_malformed_values_become_none_never_raise() -> None:
    for snapshot in ({}, {"paths": "nope"}, {"paths": [None, 3, {"path_id": "x"}]},
                     {"tunnel": [], "channel": 5, "counters": [1], "sessions": 7},
                     {"paths": [{"path_id": 1, "srtt_ms": float("nan"), "tx_bytes": True,
                                 "state": {"x": 1}, "wan": b"wan1", "loss": 10**400}]},
                     {"uptime_s": float("inf"), "counters": {"x": 10**400}, "wans": {1: 2}}):
        model = build_model(snapshot)
        json.dumps(to_dict(model), allow_nan=False)
        assert StatusServer(functools.partial(dict, snapshot)).render("/metrics").status == 200
        assert model.state == DOWN
    (path,) = build_model({"paths": [{"path_id": 1, "srtt_ms": float("nan"),
                                      "tx_bytes": True, "wan": b"wan1"}]}).paths
    assert (path.rtt_ms, path.tx_bytes, path.wan, path.state) == (None, None, None, "unknown")


def test_overall_state_up_degraded_down() -> None:
    snap = fresh(CLIENT_SNAPSHOT)
    snap["paths"][1]["state"] = "up"
    assert build_model(snap).state == UP
    snap["paths"][0]["state"] = snap["paths"][1]["state"] = "down"
    assert build_model(snap).state == DOWN
    assert build_model({"paths": []}).state == DOWN
