"""The server's nftables ruleset text and its start/stop bookkeeping (no root, no nft)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from typing import Any, ClassVar

import pytest

from ratbond.config import server_settings
from ratbond.linux.nat import NatError, ServerForwarding, ruleset

NETS = [ipaddress.ip_network("10.10.10.0/30"), ipaddress.ip_network("fd00:7262:6f6e:6400::/64"),
        ipaddress.ip_network("192.168.99.0/24")]


def test_ruleset_replaces_its_own_table_masquerades_each_family_and_clamps_mss() -> None:
    text = ruleset(tun="tun660", out_if="eth0", sources=NETS)
    lines = [line.strip() for line in text.splitlines()]
    # Declared, deleted, re-created in one transaction: a stale table is replaced, not merged.
    assert lines[:3] == ["table inet ratbond {}", "delete table inet ratbond",
                         "table inet ratbond {"]
    assert 'oifname "eth0" ip saddr 10.10.10.0/30 counter masquerade' in lines
    assert 'oifname "eth0" ip6 saddr fd00:7262:6f6e:6400::/64 counter masquerade' in lines
    assert 'oifname "eth0" ip saddr 192.168.99.0/24 counter masquerade' in lines
    assert "type nat hook postrouting priority srcnat; policy accept;" in lines
    clamps = [line for line in lines if "maxseg" in line]
    assert clamps == ['iifname "tun660" tcp flags syn / syn,rst tcp option maxseg size set rt mtu',
                      'oifname "tun660" tcp flags syn / syn,rst tcp option maxseg size set rt mtu']
    assert text.count("{") == text.count("}")
    assert "ratbond_lab" not in text and "flush ruleset" not in text


def test_ruleset_refuses_names_that_would_break_out_of_the_quotes() -> None:
    with pytest.raises(NatError):
        ruleset(tun="tun660", out_if='eth0" accept', sources=NETS)


@pytest.mark.skipif(not shutil.which("nft"), reason="nft binary not installed")
def test_nft_accepts_the_ruleset_syntax() -> None:
    text = ruleset(tun="tun660", out_if="eth0", sources=NETS).split("\n", 2)[2]
    done = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True,
                          check=False)
    if "Operation not permitted" in done.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert done.returncode == 0, done.stderr


class FakeRtnl:
    calls: ClassVar[list[tuple[Any, ...]]] = []

    def __enter__(self) -> FakeRtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def link_index(self, _name: str) -> int:
        return 7

    def gateway_route(self, command: str, **kw: Any) -> None:
        FakeRtnl.calls.append((command, kw["dst"], kw["dst_len"], kw["gateway"], kw["oif"]))


def test_missing_nft_is_one_line_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    forwarding = ServerForwarding(server_settings({"nat": True}, {}))
    with pytest.raises(NatError) as info:
        forwarding.start("tun660")
    assert "install the 'nftables' package" in str(info.value)
    assert getattr(info.value, "user_facing", False)
    assert not forwarding.table_installed


def test_lan_routes_go_via_the_clients_tunnel_address_and_are_removed() -> None:
    FakeRtnl.calls = []
    settings = server_settings({"route": ["192.168.99.0/24", "fd00:99::/64"]}, {})
    forwarding = ServerForwarding(settings, rtnl_factory=FakeRtnl)  # type: ignore[arg-type]
    forwarding.start("tun660")
    assert FakeRtnl.calls == [("add", "192.168.99.0", 24, "10.10.10.1", 7),
                              ("add", "fd00:99::", 64, "fd00:7262:6f6e:6400::1", 7)]
    forwarding.stop()
    assert [c[0] for c in FakeRtnl.calls] == ["add", "add", "del", "del"]
    forwarding.stop()  # idempotent: nothing more is deleted
    assert len(FakeRtnl.calls) == 4
