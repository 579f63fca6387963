"""The start-up sysctl check: what is off, the exact fix, and --tune-sysctls."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratbond.linux import sysctl
from ratbond.linux.sysctl import SOCKET_BUFFER, check, needs

GOOD = {"net.core.rmem_max": SOCKET_BUFFER, "net.core.wmem_max": 8 << 20,
        "net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.wan1.rp_filter": 0}


def test_nothing_to_say_when_all_is_right() -> None:
    assert needs("client", GOOD, wans=["wan1"], forwarding=True) == []
    assert needs("server", GOOD, forwarding=True) == []


def test_small_socket_buffers_warn_with_the_exact_command() -> None:
    found = needs("server", {**GOOD, "net.core.rmem_max": 212992})
    assert [n.command for n in found] == [f"sysctl -w net.core.rmem_max={4 << 20}"]
    assert "212992" in found[0].warning() and "--tune-sysctls" in found[0].warning()


def test_forwarding_only_when_needed() -> None:
    off = {**GOOD, "net.ipv4.ip_forward": 0}
    assert needs("server", off) == []
    assert [n.command for n in needs("server", off, forwarding=True)] == \
        ["sysctl -w net.ipv4.ip_forward=1"]


def test_strict_rp_filter_on_a_client_wan_warns_loose_fixes() -> None:
    strict_wan = {**GOOD, "net.ipv4.conf.wan1.rp_filter": 1}
    assert [n.command for n in needs("client", strict_wan, wans=["wan1"])] == \
        ["sysctl -w net.ipv4.conf.wan1.rp_filter=2"]
    # The kernel uses max(all, interface): all=2 makes the interface's 1 harmless ...
    assert needs("client", {**strict_wan, "net.ipv4.conf.all.rp_filter": 2}, wans=["wan1"]) == []
    # ... and all=1 is strict everywhere.
    strict_all = {**GOOD, "net.ipv4.conf.all.rp_filter": 1}
    assert [n.key for n in needs("client", strict_all, wans=["wan1"])] == \
        ["net.ipv4.conf.all.rp_filter"]
    assert needs("server", strict_all) == []  # the server has no WANs to worry about


def test_tune_sets_instead_of_warning_and_a_failed_write_still_warns() -> None:
    values = {**GOOD, "net.core.rmem_max": 1000, "net.core.wmem_max": 1000}
    written: dict[str, int] = {}

    def writer(key: str, value: int) -> None:
        if key == "net.core.wmem_max":
            raise PermissionError(13, "Permission denied")
        written[key] = value

    warnings = check("client", wans=[], tune=True, reader=values.get, writer=writer)
    assert written == {"net.core.rmem_max": SOCKET_BUFFER}
    assert len(warnings) == 1 and "net.core.wmem_max" in warnings[0]
    assert check("client", tune=False, reader=values.get, writer=writer) != []


def test_proc_paths_and_interface_names_with_dots(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sysctl, "PROC_SYS", tmp_path)
    (tmp_path / "net/ipv4/conf/eth0.100").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/eth0.100/rp_filter").write_text("1\n")
    assert sysctl.read("net.ipv4.conf.eth0.100.rp_filter") == 1
    sysctl.write("net.ipv4.conf.eth0.100.rp_filter", 2)
    assert sysctl.read("net.ipv4.conf.eth0.100.rp_filter") == 2
    assert sysctl.read("net.core.nonexistent") is None


def test_wans_and_lans_from_snapshots() -> None:
    import ipaddress
    import socket

    from ratbond.linux.wan import AddrInfo, LinkInfo, RouteInfo

    links = [LinkInfo(1, "lo", True, True), LinkInfo(2, "wan1", True, True),
             LinkInfo(3, "br-lan", True, True), LinkInfo(4, "tun660", True, True),
             LinkInfo(5, "isp", True, True)]
    v4 = socket.AF_INET

    def addr(i: int, ip: str) -> AddrInfo:
        return AddrInfo(i, ipaddress.ip_address(ip), 24, v4)

    addrs = [addr(1, "127.0.0.1"), addr(2, "10.0.1.2"), addr(3, "192.168.1.1"),
             addr(4, "10.10.10.1"), addr(5, "10.0.9.2")]
    routes = [RouteInfo(100, 0, 2, "10.0.1.1", None, v4),   # a WAN: default in its own table
              RouteInfo(254, 0, 5, "10.0.9.1", None, v4),   # default in main only: not a LAN
              RouteInfo(254, 24, 3, None, None, v4)]
    assert sysctl.wans_and_lans(links, addrs, routes, tun="tun660") == (["wan1"], ["br-lan"])
    # A LAN means forwarding matters on the client too.
    found = needs("client", {**GOOD, "net.ipv4.ip_forward": 0}, forwarding=True)
    assert [n.command for n in found] == ["sysctl -w net.ipv4.ip_forward=1"]
    assert "LAN" in found[0].why


def test_ipv6_interface_keys_with_dots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sysctl, "PROC_SYS", tmp_path)
    (tmp_path / "net/ipv6/conf/eth0.7").mkdir(parents=True)
    (tmp_path / "net/ipv6/conf/eth0.7/accept_ra").write_text("1\n")
    sysctl.ensure("net.ipv6.conf.eth0.7.accept_ra", 2, why="test")
    assert (tmp_path / "net/ipv6/conf/eth0.7/accept_ra").read_text() == "2\n"


def test_strict_rp_filter_on_the_servers_tun_warns_and_the_tun_alone_is_fixed() -> None:
    tun = "net.ipv4.conf.tun660.rp_filter"
    strict_tun = {**GOOD, tun: 1}
    found = needs("server", strict_tun, tuns=["tun660"])
    assert [n.command for n in found] == [f"sysctl -w {tun}=2"]
    assert "--route" in found[0].why
    # all=1 makes the TUN strict too; setting the TUN to 2 is enough (max(all, tun) = 2).
    strict_all = {**GOOD, "net.ipv4.conf.all.rp_filter": 1, tun: 0}
    found = needs("server", strict_all, tuns=["tun660"])
    assert [n.command for n in found] == [f"sysctl -w {tun}=2"]
    assert "all.rp_filter is 1" in found[0].warning()
    assert needs("server", {**GOOD, tun: 2}, tuns=["tun660"]) == []
    assert needs("server", {**GOOD, "net.ipv4.conf.all.rp_filter": 2, tun: 1},
                 tuns=["tun660"]) == []
    assert needs("client", strict_tun, tuns=["tun660"]) == []  # the client's TUN: no reason


def test_tune_sysctls_loosens_the_servers_tun(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sysctl, "PROC_SYS", tmp_path)
    for name in ("all", "default", "tun1", "tun2", "eth0"):
        (tmp_path / f"net/ipv4/conf/{name}").mkdir(parents=True)
        (tmp_path / f"net/ipv4/conf/{name}/rp_filter").write_text("1\n" if name != "all"
                                                                 else "0\n")
    assert sysctl.matching_interfaces("tun*") == ["tun1", "tun2"]
    assert sysctl.matching_interfaces("eth0") == ["eth0"]
    warned: list[str] = []
    sysctl.at_start("server", tune=False, tun="tun*", warn=warned.append)
    assert [w.split(" is ")[0] for w in warned if "rp_filter" in w] == \
        ["net.ipv4.conf.tun1.rp_filter", "net.ipv4.conf.tun2.rp_filter"]
    sysctl.at_start("server", tune=True, tun="tun*", warn=warned.append)
    assert sysctl.read("net.ipv4.conf.tun1.rp_filter") == 2
    assert sysctl.read("net.ipv4.conf.tun2.rp_filter") == 2
    assert sysctl.read("net.ipv4.conf.eth0.rp_filter") == 1  # nothing else is touched
