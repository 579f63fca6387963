"""The lab's dual-stack WAN option (``Lab.up(ipv6=True)``), checked without root: the
commands it runs, the state it keeps, and the default that leaves existing labs unchanged."""

from __future__ import annotations

import json

from ratbond.lab import state as lab_state
from ratbond.lab import topology
from ratbond.lab.state import LabState
from ratbond.runtime.server import _host_port


def test_ipv6_policy_routing_mirrors_the_ipv4_layout() -> None:
    assert topology._policy_routing6(2) == [
        "addr add fd01:201:2::2/64 dev wan2 noprefixroute nodad",
        "route add fd01:201:2::/64 dev wan2 proto static table 102",
        "route add ::/0 via fd01:201:2::1 dev wan2 proto static src fd01:201:2::2 table 102",
        "rule add from fd01:201:2::2 lookup 102 pref 10000",
    ]


def test_ipv6_snat_gives_each_link_its_own_public_address() -> None:
    ruleset = topology._nft_ruleset6(2)
    assert "table ip6 ratbond_lab6" in ruleset
    assert 'oifname "isp0" ip6 saddr fd01:201:1::/64 snat to fd02::11' in ruleset
    assert 'oifname "isp0" ip6 saddr fd01:201:2::/64 snat to fd02::12' in ruleset
    assert topology.public_address6(2) == "fd02::12"


def test_state_defaults_to_ipv4_only_and_reads_old_files(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(lab_state, "RUN_DIR", tmp_path)
    old = {"name": "old", "prefix": "rbold-", "links": [], "phase": "up", "emulators": {},
           "owner_pid": 1}  # written before the option existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = lab_state.load_state("old")
    assert loaded.ipv6 is False
    lab = topology.Lab(loaded)
    assert lab.ipv6 is False and lab.server_public_ip6 is None
    assert lab.server_public_ip == "198.18.0.100"


def test_state_keeps_the_ipv6_choice(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(lab_state, "RUN_DIR", tmp_path)
    LabState(name="dual", prefix="rbdual-", links=[], ipv6=True).save()
    lab = topology.Lab(lab_state.load_state("dual"))
    assert lab.ipv6 is True and lab.server_public_ip6 == "fd02::100"


def test_status_brackets_an_ipv6_remote() -> None:
    assert _host_port(("198.18.0.11", 44306)) == "198.18.0.11:44306"
    assert _host_port(("fd02::11", 44306)) == "[fd02::11]:44306"
