"""Two routers with their own credentials on one server (``ratbond server --clients``).

Topology (``ratbond.lab.multi``)::

    [site1 ns] wan1, wan2 ──veth── ┐
    [site2 ns] wan1, wan2 ──veth── ┤ [server ns] ratbond server --clients FILE --aes
    [site3 ns] wan1, wan2 ──veth── ┘   tun701 10.20.1.2 (site1), tun702 10.20.2.2 (site2)

site1 and site2 are in the clients file; site3 is not, and tries first with a key of its own,
then with site2's key.  One test, in order (the lab is costly to build): both transfer at
once (hashes), ``--nat`` covers both, the outsiders get nothing, site1 cannot use site2's
address, a SIGHUP that removes site2 drops it (session, TUN, route, NAT) while site1 keeps
its session and its traffic, a SIGHUP adding it back with a new key gives it a TUN and a
session again, and the server's exit removes its TUNs and table.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ratbond.lab.bonded import wait_until
from ratbond.lab.multi import MultiLab
from ratbond.lab.netns import Namespace, stop_process
from tests.e2e.tunnel_util import XFER, finish, ping, start_listener

pytestmark = pytest.mark.root

SIZE = 2_000_000
UDP_PORT = 6000

_COUNT_UDP = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.2)
print("READY", flush=True)
got = {}
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, (host, _) = s.recvfrom(2048)
    except socket.timeout:
        continue
    got[host] = got.get(host, 0) + 1
print(json.dumps(got), flush=True)
"""

_SEND_UDP = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for i in range(int(sys.argv[4])):
    s.sendto(b"x%d" % i, (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.01)
"""


@pytest.fixture
def multi() -> Iterator[MultiLab]:
    lab = MultiLab.up(3)
    try:
        lab.write_clients_file(lab.clients[:2])
        lab.extra_args = ["--aes"]
        yield lab
    finally:
        lab.down()


def upload(ns: Namespace, host: str, port: int, seed: str,
           results: dict[str, Any]) -> None:
    sent = ns.run(sys.executable, XFER, "tcp-send", host, str(port), str(SIZE), seed,
                  timeout=60)
    results[seed] = json.loads(sent.stdout.decode().strip())


def transfer_all(lab: MultiLab, names: list[int], tag: str) -> None:
    """Each chosen client uploads SIZE bytes to its own server tunnel address, at once."""
    receivers = {}
    for index in names:
        client = lab.clients[index - 1]
        receivers[index] = start_listener(lab.server_ns, "tcp-recv", client.server_tunnel_ip,
                                          str(5000 + index))
    sent: dict[str, Any] = {}
    threads = [threading.Thread(target=upload, args=(
        lab.clients[i - 1].ns, lab.clients[i - 1].server_tunnel_ip, 5000 + i, f"{tag}{i}",
        sent)) for i in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(70)
    for index, receiver in receivers.items():
        got = finish(receiver, timeout=30)
        assert got["bytes"] == SIZE
        assert got["sha256"] == sent[f"{tag}{index}"]["sha256"], f"site{index} corrupted"


def udp_from(lab: MultiLab, ns: Namespace, source: str, dest: str, count: int
             ) -> dict[str, int]:
    receiver = lab.server_ns.popen(sys.executable, "-c", _COUNT_UDP, str(UDP_PORT), "2.5",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == b"READY"
        ns.run(sys.executable, "-c", _SEND_UDP, source, dest, str(UDP_PORT), str(count))
        out, _ = receiver.communicate(timeout=10)
    finally:
        stop_process(receiver)
    result: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def block(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(b for b in status["clients"] if b["name"] == name)


def test_two_clients_share_a_server_and_nothing_else(multi: MultiLab) -> None:
    lab = multi
    site1, site2, site3 = lab.clients
    lab.start_server("--nat", "--nat-out=c1w1")  # the lab's server has no default route
    for client in (site1, site2):
        lab.start_client(client)
    site3_key = site3.secret_file
    lab.start_client(site3)  # a key the server has never heard of
    lab.wait_clients_up({"site1", "site2"}, timeout=20)

    # both at once, each over its own TUN, each intact
    transfer_all(lab, [1, 2], "both")
    status = lab.server_status()
    assert {b["name"] for b in status["clients"]} == {"site1", "site2"}
    for name in ("site1", "site2"):
        assert block(status, name)["counters"]["rx_packets"] > SIZE // 1500

    for client in (site1, site2):  # IPv6 inside each client's tunnel too
        assert ping(client.ns, client.server_tunnel_ip6), client.name

    # --nat: one table for every client's subnets and TUNs
    table = lab.server_ns.output("nft", "list", "table", "inet", "ratbond")
    for text in ("tun701", "tun702", "10.20.1.0/30", "192.168.2.0/24"):
        assert text in table

    # the outsider: no session, and the server counted its key id as unknown
    assert site3.proc is not None and site3.proc.poll() is None
    assert not lab.client_status(site3).get("session")
    assert status["drops"].get("unknown_key", 0) > 0
    # ... nor with site2's key (its own addressing): refused, site2 untouched
    site2_session = block(status, "site2")["session"]
    lab.stop_client(site3)
    lab.start_client(site3, secret_file=site2.secret_file)
    refused = status["drops"].get("mode_mismatch", 0)
    wait_until(lambda: lab.server_status()["drops"].get("mode_mismatch", 0) > refused, 10,
               what="site3's initiation with site2's key refused")
    status = lab.server_status()
    assert not lab.client_status(site3).get("session")
    assert block(status, "site2")["session"] == site2_session
    assert lab.clients_up(status) == {"site1", "site2"}
    lab.stop_client(site3)
    assert site3_key.exists()

    # site1 pretends to be site2 (its tunnel address): never delivered, counted
    site1.ns.run("ip", "addr", "add", f"{site2.tunnel_ip}/32", "dev", "lo")
    spoofed_before = block(lab.server_status(), "site1")["drops"]["spoofed_source"]
    got = udp_from(lab, site1.ns, site2.tunnel_ip, site1.server_tunnel_ip, 20)
    assert got.get(site2.tunnel_ip, 0) == 0
    assert block(lab.server_status(), "site1")["drops"]["spoofed_source"] >= spoofed_before + 20
    log = (lab.workdir / "server.log").read_text()
    assert "client site1: dropped" in log and "whose source address it does not own" in log
    assert log.count("client site1: dropped") <= 3  # rate-limited, not one line per packet
    assert udp_from(lab, site1.ns, site1.tunnel_ip, site1.server_tunnel_ip, 20) == {
        site1.tunnel_ip: 20}  # the control: its own address gets through

    # a SIGHUP with a broken file changes nothing and says why
    site1_session = block(lab.server_status(), "site1")["session"]
    lab.clients_file.write_text(site1.toml() + site1.toml())  # site1 listed twice
    lab.reload_server()
    wait_until(lambda: "keeping the 2 clients running" in (lab.workdir / "server.log")
               .read_text(), 10, what="the broken file refused")
    assert "name: 'site1' is used by another client" in (lab.workdir / "server.log").read_text()
    assert lab.clients_up() == {"site1", "site2"}

    # SIGHUP without site2: site2's session and TUN go, site1 keeps both
    lab.write_clients_file([site1])
    lab.reload_server()
    wait_until(lambda: [b["name"] for b in lab.server_status()["clients"]] == ["site1"], 10,
               what="site2 removed by SIGHUP")
    assert "tun702" not in lab.server_ns.output("ip", "-br", "link")
    assert "192.168.2.0/24" not in lab.server_ns.output("ip", "route")
    status = lab.server_status()
    assert block(status, "site1")["session"] == site1_session
    assert lab.clients_up(status) == {"site1"}
    table = lab.server_ns.output("nft", "list", "table", "inet", "ratbond")
    assert "tun701" in table and "tun702" not in table and "192.168.2.0/24" not in table
    transfer_all(lab, [1], "after")
    wait_until(lambda: not lab.client_status(site2).get("session")
               or lab.client_status(site2).get("state") == "down", 15,
               what="site2 sees its tunnel gone")

    # SIGHUP adding site2 back with a new secret: its TUN returns, only the new key works
    site2.secret_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    lab.write_clients_file([site1, site2])
    lab.reload_server()
    wait_until(lambda: "tun702" in lab.server_ns.output("ip", "-br", "link"), 10,
               what="site2's TUN back after SIGHUP")
    unknown = lab.server_status()["drops"].get("unknown_key", 0)
    wait_until(lambda: lab.server_status()["drops"].get("unknown_key", 0) > unknown, 12,
               what="site2's old key refused")
    assert block(lab.server_status(), "site2")["session"] is None
    lab.stop_client(site2)
    lab.start_client(site2)  # now with the new key
    lab.wait_clients_up({"site1", "site2"}, timeout=20)
    assert block(lab.server_status(), "site1")["session"] == site1_session
    transfer_all(lab, [1, 2], "again")
    assert lab.tracebacks() == []
    lab.stop_server()
    assert lab.server_ns.run("nft", "list", "table", "inet", "ratbond", check=False
                             ).returncode != 0  # removed on exit
    assert "tun701" not in lab.server_ns.output("ip", "-br", "link")
