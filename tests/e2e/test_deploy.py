"""Deploying on a fresh router: ``policy-routing apply``, the tunnel, ``--nat``, clean removal.

The lab's client starts like a router out of the box: each WAN's default route in main
only, no per-WAN tables, no rules.  ``ratbond policy-routing apply`` must make it a
ratbond client; ``--nat`` on the server must let the client reach the ISP side of the
server through the tunnel; ``remove`` and the client's exit must leave the rules and every
routing table exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.lab.bonded import BondedTunnel, wait_until
from ratbond.lab.netns import Namespace
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import ISP_SERVER_SIDE_IP, RULE_PREF, Lab, isp_address, table_id
from ratbond.lab.topology import wan_address as lab_wan_address

pytestmark = [pytest.mark.root]

DIRECT = LinkSpec(None, None, direct=True)
LINKS = 2
CLIENT_LAN = "192.168.77.0/24"


def _ratbond(ns: Namespace, *args: str) -> subprocess.CompletedProcess[bytes]:
    return ns.run(sys.executable, "-m", "ratbond", *args, check=False, timeout=30)


def _make_fresh_router(client: Namespace, links: int = LINKS) -> None:
    """Move each WAN's routes from its table into main and drop the lab's rules."""
    commands: list[str] = []
    for i in range(1, links + 1):
        table, wan, ip = table_id(i), f"wan{i}", lab_wan_address(i)
        commands += [f"rule del pref {RULE_PREF} from {ip} lookup {table}",
                     f"route del default table {table}",
                     f"route del 10.201.{i}.0/24 table {table}",
                     f"route add 10.201.{i}.0/24 dev {wan} proto kernel scope link src {ip}",
                     f"route add default via {isp_address(i)} dev {wan} metric {100 + i}"]
    client.run("ip", "-batch", "-", input_bytes=("\n".join(commands) + "\n").encode())


def _snapshot(ns: Namespace) -> tuple[list[Any], list[Any]]:
    rules = json.loads(ns.output("ip", "-j", "rule"))
    routes = [json.loads(ns.output("ip", f"-{v}", "-j", "route", "show", "table", "all"))
              for v in (4, 6)]
    return rules, routes


def _difference(before: tuple[list[Any], list[Any]], after: tuple[list[Any], list[Any]]) -> str:
    flat = [[json.dumps(e, sort_keys=True) for e in (s[0] + s[1][0] + s[1][1])]
            for s in (before, after)]
    return (f"gone: {sorted(set(flat[0]) - set(flat[1]))}\n"
            f"new: {sorted(set(flat[1]) - set(flat[0]))}")


@pytest.fixture
def fresh_router(tmp_path: Path) -> Iterator[tuple[Lab, BondedTunnel]]:
    lab = Lab.up([DIRECT] * LINKS)
    tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip,
                          server_args=["--nat", f"--route={CLIENT_LAN}"], log_dir=tmp_path)
    try:
        _make_fresh_router(lab.client)
        # IPv6 link-local addresses finish DAD (and get their local routes) only now and
        # then: wait, so the "before" snapshot is the settled state.
        wait_until(lambda: not lab.client.output("ip", "-6", "addr", "show", "tentative")
                   .strip(), 10, what="IPv6 DAD finished on the WANs")
        yield lab, tunnel
    finally:
        tunnel.stop()
        lab.down()


def test_fresh_router_apply_tunnel_nat_remove_leaves_it_as_before(
        fresh_router: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = fresh_router
    before = _snapshot(lab.client)

    shown = _ratbond(lab.client, "policy-routing", "show")
    assert shown.returncode == 0
    assert b"fix: ratbond policy-routing apply --wan wan1 --wan wan2" in shown.stdout

    applied = _ratbond(lab.client, "policy-routing", "apply", "--wan", "wan1", "--wan", "wan2")
    assert applied.returncode == 0, applied.stderr.decode()
    rules = json.loads(lab.client.output("ip", "-j", "rule"))
    ours = sorted((r["src"], r["table"]) for r in rules if r.get("priority") == 10000)
    assert ours == [("10.201.1.2", "100"), ("10.201.2.2", "101")]
    assert "MISSING" not in _ratbond(lab.client, "policy-routing", "show").stdout.decode()
    again = _ratbond(lab.client, "policy-routing", "apply", "--wan", "wan1", "--wan", "wan2")
    assert b"nothing to do" in again.stdout

    tunnel.start(paths=LINKS, timeout=25)
    table = lab.server.output("nft", "list", "table", "inet", "ratbond")
    assert "masquerade" in table and "maxseg size set rt mtu" in table
    assert lab.server.output("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert f"ip saddr {CLIENT_LAN}" in table
    lan_route = lab.server.output("ip", "route", "show", CLIENT_LAN)
    assert "via 10.10.10.2 dev tun660" in lan_route, lan_route
    running = _ratbond(lab.client, "policy-routing", "show").stdout.decode()
    assert "tun660" not in running and "MISSING" not in running, running
    # Main still holds the WANs' defaults; the client's /1 routes send this into the tunnel,
    # and only the server's masquerade lets the reply find its way back.
    lab.client.run("ping", "-c", "3", "-i", "0.2", "-W", "2", ISP_SERVER_SIDE_IP, timeout=15)
    counted = lab.server.output("nft", "list", "table", "inet", "ratbond")
    assert "packets 0 " not in counted.split("10.10.10.0/30", 1)[1].splitlines()[0]

    assert tunnel.stop_client() == 0
    assert tunnel.stop_server() == 0
    tables = lab.server.output("nft", "list", "tables")
    assert "inet ratbond" not in tables
    assert not tunnel.errors()

    removed = _ratbond(lab.client, "policy-routing", "remove")
    assert removed.returncode == 0, removed.stderr.decode()
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: _snapshot(lab.client) == before, 5, what="rules and routes as before")
    after = _snapshot(lab.client)
    assert after == before, _difference(before, after)


def test_server_without_nft_binary_says_which_package(tmp_path: Path) -> None:
    lab = Lab.up([DIRECT])
    try:
        # PATH without nft: a one-line error naming the package, exit code 1.
        bare = tmp_path / "bin"
        bare.mkdir()
        for tool in ("ip",):
            (bare / tool).symlink_to(f"/usr/sbin/{tool}")
        env_python = sys.executable
        done = lab.server.run("env", f"PATH={bare}", env_python, "-m", "ratbond", "server",
                              "--nosyslog", "--nat", "--http-listen-addr=disable",
                              check=False, timeout=30)
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert "install the 'nftables' package" in err
        assert "Traceback" not in err
        assert "tun660" not in lab.server.output("ip", "-br", "link")
    finally:
        lab.down()


def test_failed_start_still_removes_the_nat_table() -> None:
    lab = Lab.up([DIRECT])
    blocker: subprocess.Popen[bytes] | None = None
    try:
        # The status port is taken: the server fails after its NAT table was loaded.
        blocker = lab.server.popen(sys.executable, "-c",
                                   "import socket,time;s=socket.socket();"
                                   "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                                   "s.bind(('127.0.0.1',8091));s.listen();print('ok',flush=True);"
                                   "time.sleep(60)", stdout=subprocess.PIPE)
        assert blocker.stdout is not None and blocker.stdout.readline() == b"ok\n"
        done = _ratbond(lab.server, "server", "--nosyslog", "--nat",
                        "--http-listen-addr=127.0.0.1:8091")
        err = done.stderr.decode()
        assert done.returncode == 1, err
        assert "address in use" in err
        assert "NAT: masquerading" in err  # the table was loaded before the failure
        assert "inet ratbond" not in lab.server.output("nft", "list", "tables")
    finally:
        if blocker is not None:
            blocker.kill()
            blocker.wait()
        lab.down()


def test_apply_again_follows_a_new_lease_and_remove_restores() -> None:
    lab = Lab.up([DIRECT] * LINKS)
    try:
        _make_fresh_router(lab.client)
        wait_until(lambda: not lab.client.output("ip", "-6", "addr", "show", "tentative")
                   .strip(), 10, what="IPv6 DAD finished on the WANs")
        baseline_rules = _snapshot(lab.client)[0]
        assert _ratbond(lab.client, "policy-routing", "apply", "--wan", "wan1", "--wan",
                        "wan2", "--table-base", "200", "--pref", "9000").returncode == 0
        # A DHCP-like renewal: wan1 gets 10.201.1.7, its main routes follow.
        lab.client.run("ip", "-batch", "-", input_bytes=(
            "addr del 10.201.1.2/24 dev wan1\n"
            "addr add 10.201.1.7/24 dev wan1 noprefixroute\n"
            "route add 10.201.1.0/24 dev wan1 proto kernel scope link src 10.201.1.7\n"
            f"route add default via {isp_address(1)} dev wan1 metric 101\n").encode())
        again = _ratbond(lab.client, "policy-routing", "apply", "--wan", "wan1", "--wan", "wan2",
                         "--table-base", "200", "--pref", "9000")
        assert again.returncode == 0, again.stderr.decode()
        assert b"from 10.201.1.7/32 lookup 200" in again.stdout
        rules = json.loads(lab.client.output("ip", "-j", "rule"))
        ours = sorted((r["src"], r["table"]) for r in rules if r.get("priority") == 9000)
        assert ours == [("10.201.1.7", "200"), ("10.201.2.2", "201")]
        table = lab.client.output("ip", "route", "show", "table", "200")
        assert "src 10.201.1.7" in table and "10.201.1.2" not in table
        # The default range holds nothing of ours: removing it changes nothing ...
        applied = _snapshot(lab.client)
        assert len([r for family in applied[1] for r in family
                    if r.get("protocol") == "98"]) == 4
        assert _ratbond(lab.client, "policy-routing", "remove").returncode == 0
        assert _snapshot(lab.client) == applied
        # ... the range used removes every rule and route ratbond added, and only those.
        assert _ratbond(lab.client, "policy-routing", "remove", "--table-base", "200",
                        "--pref", "9000").returncode == 0
        rules_after, routes_after = _snapshot(lab.client)
        assert rules_after == baseline_rules
        assert not [r for family in routes_after for r in family if r.get("protocol") == "98"]
        assert [r for family in applied[1] for r in family if r.get("protocol") != "98"] == \
            [r for family in routes_after for r in family]
    finally:
        lab.down()


def test_ipv6_wan_gets_its_table_and_rule_too() -> None:
    lab = Lab.up([DIRECT])
    try:
        _make_fresh_router(lab.client, links=1)
        lab.client.run("ip", "-6", "-batch", "-", input_bytes=(
            b"addr add 2001:db8:1::2/64 dev wan1 nodad\n"
            b"route add default via 2001:db8:1::1 dev wan1 metric 1024\n"))
        wait_until(lambda: not lab.client.output("ip", "-6", "addr", "show", "tentative")
                   .strip(), 10, what="IPv6 DAD finished on the WANs")
        before = _snapshot(lab.client)
        applied = _ratbond(lab.client, "policy-routing", "apply", "--wan", "wan1")
        assert applied.returncode == 0, applied.stderr.decode()
        rules6 = json.loads(lab.client.output("ip", "-6", "-j", "rule"))
        assert [(r["src"], r["table"]) for r in rules6 if r.get("priority") == 10000] == \
            [("2001:db8:1::2", "100")]
        table6 = lab.client.output("ip", "-6", "route", "show", "table", "100")
        assert "default via 2001:db8:1::1 dev wan1 proto 98 src 2001:db8:1::2" in table6
        assert "2001:db8:1::/64 dev wan1 proto 98" in table6
        assert b"nothing to do" in _ratbond(lab.client, "policy-routing", "apply", "--wan",
                                            "wan1").stdout
        assert _ratbond(lab.client, "policy-routing", "remove").returncode == 0
        after = _snapshot(lab.client)
        assert after == before, _difference(before, after)
    finally:
        lab.down()
