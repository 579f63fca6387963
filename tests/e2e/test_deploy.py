"""Deploying on a fresh router: ``policy-routing apply`` or ``client --manage-policy-routing``,
the tunnel, ``--nat``, clean removal.

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

from ratbond.lab.bonded import CLIENT_TUNNEL_IP, BondedTunnel, wait_until
from ratbond.lab.netns import Namespace, namespace_group
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import ISP_SERVER_SIDE_IP, RULE_PREF, Lab, isp_address, table_id
from ratbond.lab.topology import wan_address as lab_wan_address
from tests.e2e.tunnel_util import XFER, finish, start_listener

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
    assert f"via {CLIENT_TUNNEL_IP} dev tun660" in lan_route, lan_route
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


def _ours(ns: Namespace) -> tuple[list[tuple[str, str]], list[str]]:
    """ratbond's rules (src, table) and the tables its routes are in."""
    rules = json.loads(ns.output("ip", "-j", "rule"))
    routes = json.loads(ns.output("ip", "-j", "route", "show", "table", "all", "proto", "98"))
    return (sorted((r["src"], r["table"]) for r in rules if r.get("priority") == RULE_PREF),
            sorted({str(r.get("table")) for r in routes}))


def _path_locals(tunnel: BondedTunnel) -> dict[str, tuple[str, str]]:
    return {str(p.get("wan")): (str(p.get("local")), str(p.get("state")))
            for p in tunnel.client_status().get("paths", [])}


def test_managed_policy_routing_follows_a_new_lease_and_exit_restores(
        fresh_router: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = fresh_router
    before = _snapshot(lab.client)
    assert _ours(lab.client) == ([], [])
    tunnel.client_args = ["--manage-policy-routing"]
    tunnel.start(paths=LINKS, timeout=25)  # no 'policy-routing apply': the client does it
    assert _ours(lab.client) == ([("10.201.1.2", "100"), ("10.201.2.2", "101")],
                                 ["100", "101"])
    assert _path_locals(tunnel) == {"wan1": ("10.201.1.2", "up"), "wan2": ("10.201.2.2", "up")}

    # A DHCP-like renewal on wan1: new address, its main routes re-added by the "client".
    lab.client.run("ip", "-batch", "-", input_bytes=(
        "addr del 10.201.1.2/24 dev wan1\n"
        "addr add 10.201.1.7/24 dev wan1 noprefixroute\n"
        "route add 10.201.1.0/24 dev wan1 proto kernel scope link src 10.201.1.7\n"
        f"route add default via {isp_address(1)} dev wan1 metric 101\n").encode())
    wait_until(lambda: _ours(lab.client)[0] == [("10.201.1.7", "100"), ("10.201.2.2", "101")],
               10, what="the rule moved to the new address")
    table = lab.client.output("ip", "route", "show", "table", "100")
    assert f"default via {isp_address(1)} dev wan1 proto 98 src 10.201.1.7" in table, table
    assert "10.201.1.2" not in table
    wait_until(lambda: _path_locals(tunnel).get("wan1") == ("10.201.1.7", "up"), 20,
               what="wan1's path up again from the new address")
    tunnel.wait_paths_up(LINKS, timeout=20)
    lab.client.run("ping", "-c", "2", "-i", "0.2", "-W", "2", ISP_SERVER_SIDE_IP, timeout=15)
    running = _snapshot(lab.client)

    assert tunnel.stop_client() == 0  # SIGTERM
    assert not tunnel.errors()
    log = tunnel.logs(tail=200)
    assert "policy routing: ip rule add pref 10000 from 10.201.1.7/32 lookup 100" in log
    rules_after, routes_after = _snapshot(lab.client)
    assert rules_after == before[0], _difference(before, (rules_after, routes_after))
    assert _ours(lab.client) == ([], [])
    # Every route that is not ratbond's is still there (main as the renewal left it).
    kept = [r for family in running[1] for r in family
            if r.get("protocol") != "98" and r.get("dev") != "tun660"]
    assert kept == [r for family in routes_after for r in family], running


def test_managed_policy_routing_leaves_an_earlier_apply_alone(
        fresh_router: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = fresh_router
    applied = _ratbond(lab.client, "policy-routing", "apply", "--wan", "wan1")
    assert applied.returncode == 0, applied.stderr.decode()
    with_apply = _snapshot(lab.client)
    tunnel.client_args = ["--manage-policy-routing"]
    tunnel.start(paths=LINKS, timeout=25)
    assert _ours(lab.client) == ([("10.201.1.2", "100"), ("10.201.2.2", "101")],
                                 ["100", "101"])
    assert tunnel.stop_client() == 0
    # wan2's table (added by the client) is gone; wan1's (the earlier apply's) stays.
    after = _snapshot(lab.client)
    assert after == with_apply, _difference(with_apply, after)


def test_managed_policy_routing_is_removed_after_a_failed_start(
        fresh_router: tuple[Lab, BondedTunnel]) -> None:
    lab, _tunnel = fresh_router
    before = _snapshot(lab.client)
    blocker = lab.client.popen(sys.executable, "-c",
                               "import socket,time;s=socket.socket();"
                               "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                               "s.bind(('127.0.0.1',8092));s.listen();print('ok',flush=True);"
                               "time.sleep(60)", stdout=subprocess.PIPE)
    try:
        assert blocker.stdout is not None and blocker.stdout.readline() == b"ok\n"
        # The status port is taken: the client fails after it made the WANs' tables.
        done = _ratbond(lab.client, "client", "--nosyslog", "--manage-policy-routing",
                        f"--connect-addr={lab.server_public_ip}:12345",
                        "--http-listen-addr=127.0.0.1:8092")
    finally:
        blocker.kill()
        blocker.wait()
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "address in use" in err and "Traceback" not in err
    assert "policy routing: ip rule add pref 10000 from 10.201.1.2/32 lookup 100" in err
    after = _snapshot(lab.client)
    assert after == before, _difference(before, after)


def test_managed_policy_routing_covers_ipv6_too(tmp_path: Path) -> None:
    lab = Lab.up([DIRECT])
    tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip,
                          client_args=["--manage-policy-routing"], log_dir=tmp_path)
    try:
        _make_fresh_router(lab.client, links=1)
        lab.client.run("ip", "-6", "-batch", "-", input_bytes=(
            b"addr add 2001:db8:1::2/64 dev wan1 nodad\n"
            b"route add default via 2001:db8:1::1 dev wan1 metric 1024\n"))
        wait_until(lambda: not lab.client.output("ip", "-6", "addr", "show", "tentative")
                   .strip(), 10, what="IPv6 DAD finished on the WANs")
        before = _snapshot(lab.client)
        tunnel.start(paths=1, timeout=25)

        def rules6() -> list[tuple[str, str]]:
            return [(r["src"], r["table"]) for r in json.loads(
                lab.client.output("ip", "-6", "-j", "rule")) if r.get("priority") == RULE_PREF]

        wait_until(lambda: rules6() == [("2001:db8:1::2", "100")], 10, what="the IPv6 rule")
        table6 = lab.client.output("ip", "-6", "route", "show", "table", "100")
        assert "default via 2001:db8:1::1 dev wan1 proto 98 src 2001:db8:1::2" in table6
        assert _ours(lab.client)[0] == [("10.201.1.2", "100")]
        assert tunnel.stop_client() == 0
        after = _snapshot(lab.client)
        assert after == before, _difference(before, after)
    finally:
        tunnel.stop()
        lab.down()


LAN_HOST, LAN_GATEWAY = "192.168.77.2", "192.168.77.1"


def _lan_behind(client: Namespace, lan: Namespace) -> None:
    """A LAN namespace behind the router: one host whose default gateway is the client."""
    lan.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns",
            client.name)
    lan.run("ip", "-batch", "-", input_bytes=(
        f"addr add {LAN_HOST}/24 dev eth0\nlink set lo up\nlink set eth0 up\n"
        f"route add default via {LAN_GATEWAY}\n").encode())
    client.run("ip", "-batch", "-", input_bytes=(
        f"addr add {LAN_GATEWAY}/24 dev lan0\nlink set lan0 up\n").encode())


def _lan_upload(lab: Lab, lan: Namespace, port: int, seed: str) -> None:
    """5 MB from the LAN host to a host behind the server (the ISP's side), by hash."""
    receiver = start_listener(lab.isp, "tcp-recv", ISP_SERVER_SIDE_IP, str(port))
    try:
        sent = json.loads(lan.run(sys.executable, XFER, "tcp-send", ISP_SERVER_SIDE_IP,
                                  str(port), str(5 * 1024 * 1024), seed, timeout=60)
                          .stdout.decode().strip())
    finally:
        got = finish(receiver, timeout=60)
    assert (sent["sha256"], sent["bytes"]) == (got["sha256"], got["bytes"]) == \
        (sent["sha256"], 5 * 1024 * 1024), (sent, got)


def _lan_flows_masqueraded(server: Namespace) -> int:
    """Connections from the LAN the server masqueraded (a NAT rule sees each flow once):
    proof that they went through the tunnel, not out of a WAN directly."""
    table = server.output("nft", "list", "table", "inet", "ratbond")
    line = next(ln for ln in table.splitlines() if CLIENT_LAN in ln and "masquerade" in ln)
    return int(line.split("packets ", 1)[1].split()[0])


def test_lan_host_through_a_managed_router_and_nat_server_then_exit_restores(
        fresh_router: tuple[Lab, BondedTunnel]) -> None:
    """The issue's walk-through: fresh router with a LAN behind it, the client with
    --manage-policy-routing and --tune-sysctls (no manual step), the server with --nat and
    --route; a LAN host reaches a host behind the server; a new lease on wan1 is followed;
    the client's exit leaves rules and tables as before."""
    lab, tunnel = fresh_router
    with namespace_group() as group:
        lan = group.add("lan")
        _lan_behind(lab.client, lan)
        before = _snapshot(lab.client)
        tunnel.client_args = ["--manage-policy-routing", "--tune-sysctls"]
        tunnel.start(paths=LINKS, timeout=25)
        # A LAN was seen: --tune-sysctls turned forwarding on in the router.
        assert lab.client.output("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
        _lan_upload(lab, lan, 5101, "lan-before")
        assert _lan_flows_masqueraded(lab.server) == 1

        lab.client.run("ip", "-batch", "-", input_bytes=(
            "addr del 10.201.1.2/24 dev wan1\n"
            "addr add 10.201.1.9/24 dev wan1 noprefixroute\n"
            "route add 10.201.1.0/24 dev wan1 proto kernel scope link src 10.201.1.9\n"
            f"route add default via {isp_address(1)} dev wan1 metric 101\n").encode())
        wait_until(lambda: _path_locals(tunnel).get("wan1") == ("10.201.1.9", "up"), 20,
                   what="wan1's path up again from its new address")
        assert _ours(lab.client)[0] == [("10.201.1.9", "100"), ("10.201.2.2", "101")]
        _lan_upload(lab, lan, 5102, "lan-after")
        assert _lan_flows_masqueraded(lab.server) == 2
        running = _snapshot(lab.client)

        assert tunnel.stop_client() == 0
        assert not tunnel.errors()
        rules_after, routes_after = _snapshot(lab.client)
        assert rules_after == before[0], _difference(before, (rules_after, routes_after))
        kept = [r for family in running[1] for r in family
                if r.get("protocol") != "98" and r.get("dev") != "tun660"]
        assert kept == [r for family in routes_after for r in family]


def test_managed_policy_routing_follows_a_wan_appearing_and_leaving(
        fresh_router: tuple[Lab, BondedTunnel]) -> None:
    lab, tunnel = fresh_router
    before = _snapshot(lab.client)
    # wan2 has its address but no default route yet (its DHCP client has not finished).
    lab.client.run("ip", "route", "del", "default", "dev", "wan2")
    tunnel.client_args = ["--manage-policy-routing"]
    tunnel.start(paths=1, timeout=25)
    assert _ours(lab.client) == ([("10.201.1.2", "100")], ["100"])

    lab.client.run("ip", "route", "add", "default", "via", isp_address(2), "dev", "wan2",
                   "metric", "102")
    wait_until(lambda: _ours(lab.client) == ([("10.201.1.2", "100"), ("10.201.2.2", "101")],
                                             ["100", "101"]), 10, what="wan2's table and rule")
    tunnel.wait_paths_up(2, timeout=20)

    lab.client.run("ip", "route", "del", "default", "dev", "wan2")
    wait_until(lambda: _ours(lab.client) == ([("10.201.1.2", "100")], ["100"]), 10,
               what="wan2's table and rule gone")
    wait_until(lambda: _path_locals(tunnel).get("wan2", ("", ""))[1] == "down", 10,
               what="wan2's path down")
    assert len(tunnel.paths_up(tunnel.client_status())) == 1

    # Back again: the same table as before (a WAN keeps its number while the client runs).
    lab.client.run("ip", "route", "add", "default", "via", isp_address(2), "dev", "wan2",
                   "metric", "102")
    wait_until(lambda: ("10.201.2.2", "101") in _ours(lab.client)[0], 10,
               what="wan2 back in table 101")
    tunnel.wait_paths_up(2, timeout=20)
    assert tunnel.stop_client() == 0
    after = _snapshot(lab.client)
    assert after == before, _difference(before, after)
