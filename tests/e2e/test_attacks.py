"""The secure channel under attack in the lab: replays, bit flips and junk floods.

An attacker in the ISP namespace records the client's datagrams during a transfer and throws
them back at the server from other addresses: exact copies, copies with one bit flipped, and
random junk from many source addresses.  The transfer's data must stay intact, both ends stay
up, no path moves to an attacker's address, the server's memory stays flat, and the drop
counters say what happened.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ratbond.lab.bonded import SERVER_TUNNEL_IP, BondedTunnel
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from tests.e2e.tunnel_util import XFER, finish, start_listener

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOOLS = str(Path(__file__).with_name("udp_tools.py"))
MB = 1 << 20
ATTACKERS = [f"198.18.0.{150 + i}" for i in range(16)]


def rss_kib(pid: int) -> int:
    """Resident memory of the ratbond server (the python child of ``ip netns exec``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def server_pid(tunnel: BondedTunnel) -> int:
    assert tunnel.server is not None
    pids = tunnel.server_ns.pids()
    assert pids, "server namespace has no process"
    return max(pids)  # ip netns exec replaces itself with python: one process


@pytest.mark.parametrize("mode", ["aes", "authenticated"])
def test_replays_flips_and_junk_are_dropped_and_counted(tmp_path: Path, mode: str) -> None:
    secret = ["--secret=lab attack secret"] + (["--aes"] if mode == "aes" else [])
    with Lab.up([LinkSpec(None, None, direct=True)] * 2) as lab:
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, secret, secret,
                              log_dir=tmp_path)
        with tunnel:
            tunnel.start(paths=2)
            for address in ATTACKERS:
                lab.isp.run("ip", "addr", "add", f"{address}/24", "dev", "isp0")
            addresses_before = {p["path_id"]: p["remote"]
                                for p in tunnel.server_status()["paths"]}
            pid = server_pid(tunnel)
            rss_before = rss_kib(pid)

            receiver = start_listener(lab.server, "tcp-recv", SERVER_TUNNEL_IP, "5001")
            capture = start_listener(lab.isp, "capture", "isp0", "12345", "2000", "20",
                                     str(tmp_path / "cap.bin"), script=TOOLS)
            sender = lab.client.popen(sys.executable, XFER, "tcp-send", SERVER_TUNNEL_IP,
                                      "5001", str(40 * MB), "attacked", str(8 * MB),
                                      stdout=-1, stderr=-1)
            captured = finish(capture)["captured"]
            assert captured == 2000
            attacks = {}
            for attack in ("exact", "flip", "junk"):
                out = lab.isp.output(sys.executable, TOOLS, "replay", str(tmp_path / "cap.bin"),
                                     lab.server_public_ip, "12345", ",".join(ATTACKERS[:8]),
                                     attack, timeout=120)
                attacks[attack] = json.loads(out)["sent"]
            sent = finish(sender, timeout=120)
            got = finish(receiver, timeout=120)

            assert got["sha256"] == sent["sha256"] and got["bytes"] == 40 * MB
            tunnel.check_alive()
            status = tunnel.server_status()
            drops = status["drops"]
            # Every exact copy is either a replay (seen counter) or, once old keys are gone,
            # refused as unknown; none is accepted.  Bit flips fail authentication (or, when
            # the flip hits the clear header, parsing/session lookup).  Junk never parses.
            assert drops["replayed"] > 0
            assert drops["auth_failed"] > 0
            refused = sum(drops.values())
            assert refused >= attacks["exact"] + attacks["flip"] + attacks["junk"] * 0.99
            assert {p["path_id"]: p["remote"] for p in status["paths"]} == addresses_before
            assert rss_kib(pid) - rss_before < 20_000  # KiB: no state grew per datagram
        assert tunnel.errors() == [], "an exception reached the event loop"
