"""The first hour on a real router, scripted: what ratbond says and does when the router is
set up the way a new user's often is (issue 10).

Topology: the lab's (``ratbond.lab.topology``)::

    [client ns] wan1, wan2 ── emulators ── [isp ns, SNAT] ── [server ns]
      tables 101/102 + "from <wan-ip>" rules         ratbond server

Each test starts from that layout and breaks one thing the way users do: the ISP's
default route left in main, no per-WAN tables at all, a server name that resolves only
after ratbond started.  Assertions are on the kernel's routing tables, the status JSON and
the exact log lines; every namespace and file the tests create is removed afterwards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.lab.bonded import SERVER_PORT, SERVER_TUNNEL_IP, BondedTunnel, wait_until
from ratbond.lab.topology import Lab
from tests.e2e.tunnel_util import LabFactory

pytestmark = [pytest.mark.root, pytest.mark.slow]

LINKS = ["20:5ms", "20:10ms"]
SECRET = ["--aes", "--secret=first-hour"]


@pytest.fixture
def walk(lab: LabFactory, tmp_path: Path) -> Iterator[tuple[Lab, BondedTunnel]]:
    """A lab with two emulated WANs and an (unstarted) tunnel; stopped and checked after."""
    built = lab(LINKS)
    tunnel = BondedTunnel(built.server, built.client, built.server_public_ip,
                          server_args=SECRET, client_args=SECRET, log_dir=tmp_path)
    try:
        yield built, tunnel
    finally:
        tunnel.stop()
    assert tunnel.errors() == [], "an exception reached the event loop"


def routes(lab: Lab, *args: str) -> list[dict[str, Any]]:
    out = lab.client.run("ip", "-j", "route", "show", *args).stdout
    return list(json.loads(out or b"[]"))


def client_log(tunnel: BondedTunnel) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in tunnel.log_dir.glob(f"{tunnel.client_ns.name}-client.log"))


def test_existing_default_route_is_kept_and_the_tunnel_still_takes_the_traffic(
        walk: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = walk
    # The router's own ISP default left in main, as on a fresh install.
    lab.client.run("ip", "route", "add", "default", "via", "10.201.1.1", "dev", "wan1",
                   "onlink")
    tunnel.start(paths=2)
    wait_until(lambda: tunnel.client_status()["tunnel"]["default_route"] is True, 5,
               what="the route into the tunnel reported")
    main = {(r["dst"], r.get("gateway"), r["dev"]) for r in routes(lab)}
    assert ("default", "10.201.1.1", "wan1") in main  # the user's route is untouched
    assert {("0.0.0.0/1", SERVER_TUNNEL_IP, "tun660"),
            ("128.0.0.0/1", SERVER_TUNNEL_IP, "tun660")} <= main
    # An internet address now leaves through the tunnel, not in the clear through wan1.
    via = json.loads(lab.client.run("ip", "-j", "route", "get", "192.0.2.99").stdout)
    assert via[0]["dev"] == "tun660"
    assert "routing all traffic into the tunnel with two /1 routes" in client_log(tunnel)
    # When ratbond stops, its routes go and the user's default is what is left.
    tunnel.stop()
    main = {(r["dst"], r.get("gateway"), r["dev"]) for r in routes(lab)}
    assert ("default", "10.201.1.1", "wan1") in main
    assert not any(dev == "tun660" for _dst, _gw, dev in main)


def test_no_wan_says_so_and_a_wan_set_up_later_joins(walk: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = walk
    for i in (1, 2):  # defaults only in main: no interface is a WAN for ratbond
        lab.client.run("ip", "route", "del", "default", "table", str(100 + i))
    tunnel.start_server()
    tunnel.start_client()
    wait_until(lambda: "no WAN: no interface has a default route" in client_log(tunnel), 5,
               what="the no-WAN warning")
    wait_until(lambda: "handshake failed: no WAN link is up" in client_log(tunnel), 10,
               what="the handshake failure naming the missing WAN")
    assert "server down or unreachable" not in client_log(tunnel)
    lab.client.run("ip", "route", "add", "default", "via", "10.201.2.1", "dev", "wan2",
                   "table", "102")
    tunnel.wait_paths_up(1, timeout=10)
    assert "WAN links found: wan2" in client_log(tunnel)
    assert [p["wan"] for p in tunnel.client_status()["paths"] if p["state"] == "up"] == ["wan2"]


def test_a_server_name_that_resolves_late_is_retried(walk: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = walk
    # ``ip netns exec`` bind-mounts /etc/netns/<ns>/hosts over /etc/hosts: a hosts file for
    # the client namespace alone, edited in place (same inode) while ratbond runs.
    etc = Path("/etc/netns") / lab.client.name
    etc.mkdir(parents=True, exist_ok=False)
    try:
        hosts = etc / "hosts"
        hosts.write_text("127.0.0.1 localhost\n")
        tunnel.client_args = [*SECRET, f"--connect-addr=vps.lab.invalid:{SERVER_PORT}"]
        tunnel.start_server()
        tunnel.start_client()
        wait_until(lambda: "cannot resolve the server vps.lab.invalid" in client_log(tunnel),
                   15, what="the resolution failure")
        with hosts.open("a") as handle:  # DNS works now
            handle.write(f"{lab.server_public_ip} vps.lab.invalid\n")
        tunnel.wait_paths_up(2, timeout=40)
        assert "the server vps.lab.invalid:12345 resolves now" in client_log(tunnel)
        assert client_log(tunnel).count("cannot resolve the server") == 1  # once per state
    finally:
        tunnel.stop()
        shutil.rmtree(etc, ignore_errors=True)
    assert not etc.exists()


MISMATCHES = {
    "secret": (["--aes", "--secret=one"], ["--aes", "--secret=two"],
               "a handshake failed authentication: that client's --secret differs",
               "the server refused the handshake: it could not authenticate this client: the "
               "--secret differs between client and server"),
    "cipher": (SECRET, [*SECRET, "--cipher=aes-256-gcm"],
               "use the same --cipher on both ends", "use the same --cipher on both ends"),
    "mode": (SECRET, ["--secret=first-hour"],
             "use the same --aes and --secret on both ends",
             "use the same --aes and --secret on both ends"),
    "tunnel-ip": (SECRET, [*SECRET, "--tunnel-ip=10.20.0.0/30"],
                  "a client has --tunnel-ip=10.20.0.0/30 --tunnel-ip6=fd00:7262:6f6e:6400::/64,"
                  " this server --tunnel-ip=10.10.10.0/30",
                  "its tunnel addressing differs from this client's (--tunnel-ip=10.20.0.0/30 "
                  "--tunnel-ip6=fd00:7262:6f6e:6400::/64): use the same --tunnel-ip and "
                  "--tunnel-ip6 on both ends"),
}


def test_each_mismatch_is_named_on_both_ends(lab: LabFactory, tmp_path: Path) -> None:
    """Wrong secret, cipher, mode or tunnel addressing: no session, and each end's log says
    which setting differs (clock skew is covered by the unit tests: a namespace cannot have
    a wall clock of its own).  One lab, a fresh server and client per case."""
    built = lab(LINKS[:1])
    for case in MISMATCHES:
        _check_mismatch(built, tmp_path / case, case)


def _check_mismatch(built: Lab, log_dir: Path, case: str) -> None:
    server_args, client_args, server_says, client_says = MISMATCHES[case]
    tunnel = BondedTunnel(built.server, built.client, built.server_public_ip,
                          server_args=server_args, client_args=client_args, log_dir=log_dir)
    server_log = log_dir / f"{built.server.name}-server.log"
    try:
        tunnel.start_server()
        tunnel.start_client()
        wait_until(lambda: server_says in server_log.read_text(errors="replace"), 10,
                   what=f"{case}: the server's message")
        wait_until(lambda: client_says in client_log(tunnel), 10,
                   what=f"{case}: the client's message")
        assert tunnel.client_status()["session"] is None, case
        assert "established" not in client_log(tunnel), case
    finally:
        tunnel.stop()
    assert tunnel.errors() == [], case
