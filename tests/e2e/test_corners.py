"""Corners no other end-to-end test covered: AES-256-GCM, rekeys under load, a PPPoE-sized
WAN, ``--mux`` failover, and the status views of a live process checked against each other.

    [client ns] wan1..wanN ──(direct veth)── [isp ns, SNAT] ── [server ns]
      ratbond client, tun660 10.10.10.1                          ratbond server, 10.10.10.2

Every test builds its own lab (unique namespace prefix) and tears it down whatever happens;
every transfer is checked by SHA-256 end to end; every wait polls with a bound.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.config import KCP_MTU, OUTER_OVERHEAD, TUN_MTU
from ratbond.lab.bonded import (
    CLIENT_STATUS_PORT,
    SERVER_STATUS_PORT,
    SERVER_TUNNEL_IP,
    SERVER_TUNNEL_IP6,
    BondedTunnel,
    wait_until,
)
from ratbond.lab.netns import Namespace
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from ratbond.runtime.common import REKEY_ENV
from tests.e2e.tunnel_util import XFER, finish, start_listener, tcp_download, tcp_upload

pytestmark = [pytest.mark.root, pytest.mark.slow]

MB = 1 << 20
SECRET = "corner cases need a secret too"
AES = ["--aes", f"--secret={SECRET}"]
DIRECT = LinkSpec(None, None, direct=True)
Factory = Callable[..., tuple[Lab, BondedTunnel]]


@pytest.fixture
def tunnel_factory(tmp_path: Path) -> Iterator[Factory]:
    """Labs with a tunnel on demand; all stopped and removed at the end of the test, and
    no traceback may have reached either end's event loop."""
    made: list[tuple[Lab, BondedTunnel]] = []

    def make(links: list[LinkSpec], server_args: list[str], client_args: list[str], *,
             ipv6: bool = False) -> tuple[Lab, BondedTunnel]:
        lab = Lab.up(links, ipv6=ipv6)
        server_ip = f"[{lab.server_public_ip6}]" if ipv6 else lab.server_public_ip
        tunnel = BondedTunnel(lab.server, lab.client, server_ip,
                              server_args=server_args, client_args=client_args,
                              log_dir=tmp_path)
        made.append((lab, tunnel))
        return lab, tunnel

    try:
        yield make
    finally:
        for lab, tunnel in made:
            tunnel.stop()
            lab.down()
    for _lab, tunnel in made:
        assert tunnel.errors() == [], "an exception reached the event loop"


def paced_upload(tunnel: BondedTunnel, port: int, size: int, rate: int, seed: str, *,
                 timeout: float = 120.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``size`` bytes client -> server through the tunnel at ``rate`` bytes/s."""
    receiver = start_listener(tunnel.server_ns, "tcp-recv", SERVER_TUNNEL_IP, str(port))
    try:
        sender = tunnel.client_ns.popen(sys.executable, XFER, "tcp-send", SERVER_TUNNEL_IP,
                                        str(port), str(size), seed, str(rate),
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        sent = finish(sender, timeout=timeout)
    finally:
        got = finish(receiver, timeout=timeout)
    return sent, got


def assert_intact(sent: dict[str, Any], got: dict[str, Any], size: int) -> None:
    """What arrived is what was sent: same length, same SHA-256."""
    assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"]) == (
        size, sent["sha256"]), (sent, got)


def frag_creates(ns: Namespace) -> int:
    """IPv4 fragments the namespace's stack has made (``Ip: FragCreates``)."""
    lines = [line.split() for line in ns.run("cat", "/proc/net/snmp").stdout.decode()
             .splitlines() if line.startswith("Ip:")]
    return int(dict(zip(lines[0], lines[1], strict=True))["FragCreates"])


def df_ping(ns: Namespace, address: str, size: int, count: int = 3) -> tuple[bool, str]:
    """``count`` pings with the don't-fragment bit and ``size`` bytes of ICMP payload."""
    proc = ns.run("ping", "-M", "do", "-c", str(count), "-i", "0.2", "-W", "2", "-s", str(size),
                  address, check=False, timeout=30)
    return proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")


# --------------------------------------------------------------------------- 1. AES-256-GCM


def test_aes_256_gcm_end_to_end(tunnel_factory: Factory) -> None:
    args = [*AES, "--cipher=aes-256-gcm"]
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], args, args)
    tunnel.start(paths=2)
    for status in (tunnel.client_status(), tunnel.server_status()):
        assert status["channel"]["cipher"] == "aes-256-gcm", status["channel"]
        assert status["channel"]["mode"] == "encrypted", status["channel"]
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5301, 8 * MB, "gcm-up")
    assert_intact(sent, got, 8 * MB)
    sent, got = tcp_download(tunnel, SERVER_TUNNEL_IP, 5302, 8 * MB, "gcm-down")
    assert_intact(sent, got, 8 * MB)
    # Both ends authenticated everything: nothing failed to open.
    for status in (tunnel.client_status(), tunnel.server_status()):
        assert status["drops"]["auth_failed"] == 0, status["drops"]


# --------------------------------------------------------------------------- 2. rekeys under load


def test_transfer_across_rekeys(tunnel_factory: Factory, monkeypatch: pytest.MonkeyPatch
                                ) -> None:
    """``RATBOND_TEST_REKEY_AFTER=2`` (test-only, read by both ends at start) rekeys every
    2 s: a 12 s paced upload crosses at least 3 rekeys and arrives intact."""
    monkeypatch.setenv(REKEY_ENV, "2")
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], AES, AES)
    tunnel.start(paths=2)
    before = int(tunnel.client_status()["channel"]["rekeys"])
    sent, got = paced_upload(tunnel, 5303, 6 * MB, MB // 2, "rekey")
    assert_intact(sent, got, 6 * MB)
    client_rekeys = int(tunnel.client_status()["channel"]["rekeys"]) - before
    server_rekeys = int(tunnel.server_status()["channel"]["rekeys"])
    assert client_rekeys >= 3, client_rekeys
    assert server_rekeys >= 3, server_rekeys
    for status in (tunnel.client_status(), tunnel.server_status()):
        assert len(tunnel.paths_up(status)) == 2  # no path lost its keys
        assert status["drops"]["key_expired"] == 0, status["drops"]  # no datagram refused
        assert status["drops"]["auth_failed"] == 0, status["drops"]


# --------------------------------------------------------------------------- 3. PPPoE-sized WAN


@pytest.mark.parametrize("wan_mtu", [1492, 1280])
def test_small_wan_mtu(tunnel_factory: Factory, wan_mtu: int) -> None:
    """One WAN whose link MTU is below Ethernet's (PPPoE: 1492; 1280: IPv6's minimum).

    The TUN MTU is fixed at 1391 (``config.TUN_MTU``): an inner packet that fits one KCP
    segment.  An outer IPv4 datagram is at most 20 + 8 + 16 + 16 + 1420 = 1480 bytes, so it
    fits a 1492 link as is; on a 1280 link the kernel fragments the outer datagram (ratbond's
    sockets leave path-MTU discovery at the kernel default), and the tunnel still carries
    DF pings at the TUN MTU and an intact TCP transfer."""
    lab, tunnel = tunnel_factory([DIRECT], AES, AES)
    lab.client.run("ip", "link", "set", "wan1", "mtu", str(wan_mtu))
    lab.isp.run("ip", "link", "set", "isp1", "mtu", str(wan_mtu))
    tunnel.start(paths=1)
    assert TUN_MTU == KCP_MTU - 24 - 5 and KCP_MTU == 1500 - OUTER_OVERHEAD
    ok, out = df_ping(lab.client, SERVER_TUNNEL_IP, TUN_MTU - 28)
    assert ok, out
    ok, out = df_ping(lab.client, SERVER_TUNNEL_IP6, TUN_MTU - 48)
    assert ok, out
    too_big, out = df_ping(lab.client, SERVER_TUNNEL_IP, TUN_MTU - 28 + 1, count=1)
    assert not too_big and re.search(r"mtu\s*=\s*1391|Message too long", out), out
    fragments_before = frag_creates(lab.client)
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5304, 4 * MB, f"mtu{wan_mtu}")
    assert_intact(sent, got, 4 * MB)
    sent, got = tcp_download(tunnel, SERVER_TUNNEL_IP, 5305, 4 * MB, f"mtu{wan_mtu}d")
    assert_intact(sent, got, 4 * MB)
    fragmented = frag_creates(lab.client) - fragments_before
    largest_outer = 20 + OUTER_OVERHEAD - 40 + KCP_MTU  # IPv4 outer header instead of IPv6
    if largest_outer <= wan_mtu:
        assert fragmented == 0, fragmented  # every datagram fits the link whole
    else:
        assert fragmented > 0, fragmented  # the kernel split the outer datagrams


# --------------------------------------------------------------------------- 4. --mux failover


def test_mux_2_failover_keeps_the_transfer_intact(tunnel_factory: Factory) -> None:
    """``--mux=2`` over two WANs is four paths; cutting wan1 under a paced upload leaves
    wan2's two, and every byte arrives."""
    lab, tunnel = tunnel_factory([DIRECT, DIRECT], AES, [*AES, "--mux=2"])
    tunnel.start(paths=4)
    paths = tunnel.client_status()["paths"]
    assert sorted(p.get("wan") for p in paths) == ["wan1", "wan1", "wan2", "wan2"], paths
    receiver = start_listener(tunnel.server_ns, "tcp-recv", SERVER_TUNNEL_IP, "5306")
    try:
        sender = tunnel.client_ns.popen(
            sys.executable, XFER, "tcp-send", SERVER_TUNNEL_IP, "5306", str(8 * MB), "mux",
            str(MB), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: sum(int(p.get("tx_bytes") or 0)
                               for p in tunnel.client_status()["paths"]) > MB, 20,
                   what="1 MB through the tunnel")
        lab.client.run("ip", "link", "set", "wan1", "down")

        def wan2_only() -> bool:
            up = [p for p in tunnel.client_status()["paths"] if p.get("state") == "up"]
            return sorted(p.get("wan") for p in up) == ["wan2", "wan2"]
        wait_until(wan2_only, 5, interval=0.05, what="only wan2's two paths up")
        sent = finish(sender, timeout=120)
    finally:
        got = finish(receiver, timeout=120)
    assert_intact(sent, got, 8 * MB)
    assert len(tunnel.paths_up(tunnel.server_status())) == 2


# --------------------------------------------------------------------------- 5. IPv6 WANs


def test_ipv6_wans_carry_the_tunnel(tunnel_factory: Factory) -> None:
    """A dual-stack WAN side (``Lab.up(ipv6=True)``) and a server reached at its IPv6
    address: every path runs over IPv6 (the IPv4 WANs are skipped: the server has no IPv4
    address given), the server sees each link's SNATed IPv6 address, and hashed transfers
    cross the tunnel both ways."""
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], [*AES, "--listen-addr=[::]:12345"], AES,
                                  ipv6=True)
    tunnel.start(paths=2)
    remotes = [str(p["remote"]) for p in tunnel.server_status()["paths"]]
    hosts = sorted(remote[1:remote.index("]")] if remote.startswith("[") else remote
                   for remote in remotes)
    assert hosts == ["fd02::11", "fd02::12"], remotes  # each link's SNATed IPv6 address
    assert sorted(p.get("wan") for p in tunnel.client_status()["paths"]) == ["wan1", "wan2"]
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5308, 4 * MB, "v6-up")
    assert_intact(sent, got, 4 * MB)
    sent, got = tcp_download(tunnel, SERVER_TUNNEL_IP6, 5309, 4 * MB, "v6-down")
    assert_intact(sent, got, 4 * MB)
    log = tunnel.logs(tail=400)
    assert "no address of its family" in log  # the IPv4 WANs were seen and skipped


# --------------------------------------------------------------------------- 6. status views


def _fetch(ns: Namespace, port: int, route: str) -> str:
    code = ("import sys,urllib.request;"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode())")
    return ns.run(sys.executable, "-c", code, f"http://127.0.0.1:{port}{route}",
                  timeout=15).stdout.decode()


def _metric(text: str, name: str, path_id: int) -> float:
    """The value of ``name`` for ``path_id`` in Prometheus text exposition."""
    pattern = re.compile(rf'^{name}(?:_total)?\{{[^}}]*path="{path_id}"[^}}]*\}} (\S+)$', re.M)
    match = pattern.search(text)
    assert match, f"{name} for path {path_id} not in /metrics"
    return float(match.group(1))


@pytest.mark.parametrize("role", ["client", "server"])
def test_status_views_of_a_live_process_agree(tunnel_factory: Factory, role: str) -> None:
    """/status.json, /status (text) and /metrics of one live end name the same paths in the
    same states, and each counter in /metrics lies between the JSON taken just before and
    the JSON taken just after (they are one process's counters, read three times)."""
    _lab, tunnel = tunnel_factory([DIRECT, DIRECT], AES, AES)
    tunnel.start(paths=2)
    sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5307, 2 * MB, "views")
    assert_intact(sent, got, 2 * MB)
    ns, port = ((tunnel.client_ns, CLIENT_STATUS_PORT) if role == "client"
                else (tunnel.server_ns, SERVER_STATUS_PORT))
    before = _fetch_json(ns, port)
    text = _fetch(ns, port, "/status")
    metrics = _fetch(ns, port, "/metrics")
    after = _fetch_json(ns, port)
    ids = sorted(int(p["path_id"]) for p in before["paths"])
    assert ids == sorted(int(p["path_id"]) for p in after["paths"])
    assert len(ids) == 2
    for path in before["paths"]:
        pid = int(path["path_id"])
        row = next((line for line in text.splitlines()
                    if re.match(rf"\s*{pid}\s", line)), None)
        assert row is not None, f"path {pid} missing from the text view:\n{text}"
        assert path["state"] in row, (path["state"], row)
        assert _metric(metrics, "ratbond_path_up", pid) == (1.0 if path["state"] == "up"
                                                             else 0.0)
        later = next(p for p in after["paths"] if int(p["path_id"]) == pid)
        for field, metric in (("tx_packets", "ratbond_path_tx_packets"),
                              ("rx_packets", "ratbond_path_rx_packets"),
                              ("tx_bytes", "ratbond_path_tx_bytes"),
                              ("rx_bytes", "ratbond_path_rx_bytes")):
            value = _metric(metrics, metric, pid)
            assert int(path[field]) <= value <= int(later[field]), (pid, field, value)
    # The upload's 2 MB went out on the client's paths and in on the server's.
    field = "tx_bytes" if role == "client" else "rx_bytes"
    assert sum(int(p[field]) for p in after["paths"]) >= 2 * MB


def _fetch_json(ns: Namespace, port: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_fetch(ns, port, "/status.json"))
    return data
