"""The status views of a real lab tunnel: rates against iperf3, a blackholed path everywhere.

    client ns ── wan1 ── emulator 20 Mbit/s, 20 ms ──┐
              └─ wan2 ── emulator 20 Mbit/s, 30 ms ──┴─ router ── server ns
    iperf3 -u -b 6M client → server through the tunnel, 14 s

Rates: the status server's 10 s averages (client tx, server rx) must match what iperf3 sent
within 10 % (ratbond counts IP packets: 28 bytes more per datagram than iperf3), the path that
carries the one UDP flow must hold all of it, the other path ~none.  Then link 2 is
blackholed (no netlink event: only liveness can tell) and within the liveness time plus one
sample the path is down with its reason in JSON, the text view, the metrics and
``ratbond status`` (exit 1).  The ends run ``--aes --secret``: no endpoint shows the secret.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratbond.lab.bonded import (
    CLIENT_STATUS_PORT,
    SERVER_STATUS_PORT,
    SERVER_TUNNEL_IP,
    BondedTunnel,
    wait_until,
)
from ratbond.lab.measure import iperf3
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

RATE_MBIT = 6.0
DATAGRAM = 1200  # only if iperf3's JSON does not name its datagram size
IP_OVERHEAD = 28  # IPv4 20 + UDP 8 around each iperf3 datagram
SECONDS = 14
SECRET = "status-lab-secret-c0ffee"
LIVENESS_S = 2.0 + 1.0 + 1.0  # --dead-after default, one sample, slack for a loaded machine

_GET = ("import sys,urllib.request\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=3)\n"
        "    sys.stdout.write(r.read().decode())\n"
        "except Exception as e:\n"
        "    sys.stdout.write('ERROR %r' % e)\n")


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[tuple[Lab, BondedTunnel]]:
    lab = Lab.up([LinkSpec.parse("20:20ms"), LinkSpec.parse("20:30ms")])
    bonded = None
    try:
        # One flow on one path (consistent hashing), so one path's rate must equal iperf3's.
        secret = ["--aes", f"--secret={SECRET}", "--balance-consistent"]
        bonded = BondedTunnel(lab.server, lab.client, lab.server_public_ip, log_dir=tmp_path,
                              server_args=secret, client_args=secret)
        bonded.start(paths=2)
        yield lab, bonded
    finally:
        if bonded is not None:
            bonded.stop()
        lab.down()
    assert bonded.errors() == [], "an exception reached the event loop"


def get(lab: Lab, end: str, route: str) -> str:
    ns, port = ((lab.client, CLIENT_STATUS_PORT) if end == "client"
                else (lab.server, SERVER_STATUS_PORT))
    out = ns.run(sys.executable, "-c", _GET, f"http://127.0.0.1:{port}/{route}", timeout=10)
    text: str = out.stdout.decode()
    return text


def get_json(lab: Lab, end: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(get(lab, end, "status.json"))
    return data


def test_rates_match_iperf3_and_a_blackholed_path_shows_down_everywhere(
        tunnel: tuple[Lab, BondedTunnel]) -> None:
    lab, _bonded = tunnel
    result: dict[str, Any] = {}

    def load() -> None:
        result.update(iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=SECONDS,
                             udp=True, bitrate=f"{RATE_MBIT}M"))

    load_thread = threading.Thread(target=load, daemon=True)
    load_thread.start()
    time.sleep(12.0)  # 10 s window fully inside the run (iperf3 needs ~1 s to start)
    client = get_json(lab, "client")
    server = get_json(lab, "server")
    load_thread.join(SECONDS + 30)
    assert result, "iperf3 gave no result"
    sent = result["raw"]["end"]["sum"]
    length = int(result["raw"]["start"]["test_start"].get("blksize") or DATAGRAM)
    iperf_bps = float(sent["bits_per_second"]) * (length + IP_OVERHEAD) / length

    client_tx = client["totals"]["rates"]["tx_10s"] * 8
    server_rx = server["totals"]["rates"]["rx_10s"] * 8
    print(f"iperf3 {iperf_bps / 1e6:.3f} Mbit/s (IP), client tx_10s {client_tx / 1e6:.3f}, "
          f"server rx_10s {server_rx / 1e6:.3f}")
    assert abs(client_tx - iperf_bps) <= 0.1 * iperf_bps
    assert abs(server_rx - iperf_bps) <= 0.1 * iperf_bps
    per_path = sorted((p["rates"]["tx_10s"] or 0.0) * 8 for p in client["paths"])
    assert per_path[-1] >= 0.95 * client_tx  # one flow, consistent hashing: one path
    assert per_path[0] <= 0.05 * client_tx

    # The secret the ends were started with shows up in no view.
    for end in ("client", "server"):
        for route in ("", "status", "status.json", "history.json", "metrics"):
            assert SECRET not in get(lab, end, route), (end, route)

    # Counters move only with traffic: idle now, the 1 s rates fall to (about) zero.
    wait_until(lambda: (get_json(lab, "client")["totals"]["rates"]["tx_1s"] or 0) * 8 < 50e3,
               5, what="client tx_1s back to idle")

    lab.link(2).blackhole()
    cut = time.monotonic()

    def wan2(status: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in status["paths"] if p.get("wan") == "wan2")

    took = wait_until(lambda: wan2(get_json(lab, "client"))["state"] != "up", LIVENESS_S,
                      interval=0.1, what="wan2 down in status.json")
    row = wan2(get_json(lab, "client"))
    print(f"wan2 down in status.json {took:.2f} s after the blackhole, reason "
          f"{row['down_reason']!r}")
    assert row["down_reason"], row
    assert get_json(lab, "client")["state"] == "degraded"

    text = get(lab, "client", "status")
    line = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["wan2"])
    assert " up " not in line and row["down_reason"] in line, line
    metrics = get(lab, "client", "metrics")
    assert 'ratbond_path_up{path="2",tunnel="tun660",wan="wan2"} 0.0' in metrics
    proc = lab.client.run(sys.executable, "-m", "ratbond", "status", "--url",
                          f"127.0.0.1:{CLIENT_STATUS_PORT}", check=False, timeout=10)
    assert proc.returncode == 1, proc.stdout.decode() + proc.stderr.decode()
    assert "DEGRADED" in proc.stdout.decode()
    assert time.monotonic() - cut < LIVENESS_S + 5.0  # all views agreed soon after
