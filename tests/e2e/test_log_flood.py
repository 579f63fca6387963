"""Logging under attack through real sockets: 100,000 bad datagrams, a handful of log lines.

``tests/unit/test_log_flood.py`` sends a million bad datagrams at each connection object;
this is the lab check that the real processes agree: from the ISP namespace (where an
attacker on the path sits), 100,000 datagrams -- junk, a wrong version, forged DATA that
carries the live session id, truncated headers, garbage handshake initiations, from 64
source ports -- go to the server's port, and as many to the client's WAN sockets. The log
of each end grows by at most a few dozen lines, its drop counters show the datagrams,
and the tunnel is untouched: same session, every path up, a ping through it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ratbond.lab.bonded import SERVER_PORT, SERVER_TUNNEL_IP, BondedTunnel
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from tests.e2e.tunnel_util import ping

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNT = 100_000
RATE = 25_000          # datagrams/s: the socket keeps up, so the counters can be compared
MAX_NEW_LOG_LINES = 36
SECRET = ["--secret=lab log flood secret", "--aes", "--hello-interval=0.5", "--dead-after=2"]

FLOOD = r"""
import json, os, random, socket, struct, sys, time
targets = [(h, int(p)) for h, p in (t.rsplit(":", 1) for t in sys.argv[1].split(","))]
session, count, rate = int(sys.argv[2], 16), int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(15)
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
header = struct.Struct("!BBHIQ")
sent = errors = 0
start = time.monotonic()
for k in range(count):
    kind = k % 5
    if kind == 0:
        data = rng.randbytes(rng.randrange(0, 1400))
    elif kind == 1:
        data = header.pack(rng.randrange(2, 256), 3, 1, session, k) + rng.randbytes(64)
    elif kind == 2:
        data = header.pack(1, 3, 1 + k % 2, session, (1 << 40) + k) + rng.randbytes(
            rng.randrange(16, 1300))
    elif kind == 3:
        data = header.pack(1, 3, 1, session, k)[: rng.randrange(0, 16)]
    else:
        data = header.pack(1, 1, 1, 0, 0) + rng.randbytes(166)
    try:
        socks[k % 64].sendto(data, targets[k % len(targets)])
        sent += 1
    except OSError:
        errors += 1
    if k % 256 == 0:
        ahead = k / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(json.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - start}))
"""


def log_lines(path: Path) -> int:
    return len(path.read_text(errors="replace").splitlines())


def drops(status: dict[str, object]) -> int:
    values = status.get("drops")
    assert isinstance(values, dict)
    return sum(int(v) for v in values.values())


def client_wan_ports(lab: Lab) -> list[str]:
    """host:port of the client's WAN sockets (10.201.<i>.2:<port>)."""
    out = []
    for line in lab.client.output("ss", "-uanH").splitlines():
        local = line.split()[3]  # 10.201.1.2%wan1:40000: bound to its device too
        if local.startswith("10.201."):
            host, port = local.rsplit(":", 1)
            out.append(f"{host.split('%')[0]}:{port}")
    return out


def flood(lab: Lab, targets: list[str], session: str) -> dict[str, float]:
    proc = lab.isp.run(sys.executable, "-c", FLOOD, ",".join(targets), session, str(COUNT),
                       str(RATE), timeout=60)
    result: dict[str, float] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


def test_100k_bad_datagrams_at_each_end_add_a_few_log_lines(tmp_path: Path) -> None:
    links = [LinkSpec.parse("direct")] * 2
    with Lab.up(links) as lab:
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, SECRET, SECRET,
                              log_dir=tmp_path)
        with tunnel:
            tunnel.start(paths=2)
            server_log = tmp_path / f"{lab.server.name}-server.log"
            client_log = tmp_path / f"{lab.client.name}-client.log"
            session = str(tunnel.client_status()["session"])
            before = {"server": (log_lines(server_log), drops(tunnel.server_status())),
                      "client": (log_lines(client_log), drops(tunnel.client_status()))}
            at_server = flood(lab, [f"{lab.server_public_ip}:{SERVER_PORT}"], session)
            wan_ports = client_wan_ports(lab)
            assert len(wan_ports) == 2, wan_ports
            at_client = flood(lab, wan_ports, session)
            assert at_server["sent"] == at_client["sent"] == COUNT
            after = {"server": (log_lines(server_log), drops(tunnel.server_status())),
                     "client": (log_lines(client_log), drops(tunnel.client_status()))}
            new_lines = {end: after[end][0] - before[end][0] for end in after}
            dropped = {end: after[end][1] - before[end][1] for end in after}
            print(f"flood: new log lines {new_lines}, drops counted {dropped} of {COUNT} each; "
                  f"sent in {at_server['seconds']:.1f} s / {at_client['seconds']:.1f} s")
            assert all(n <= MAX_NEW_LOG_LINES for n in new_lines.values()), (
                new_lines, tunnel.logs(80))
            # The kernel may drop a few under CPU contention; the rest are counted.
            assert all(d >= 0.9 * COUNT for d in dropped.values()), dropped
            assert str(tunnel.client_status()["session"]) == session
            assert len(tunnel.paths_up(tunnel.client_status())) == 2
            assert len(tunnel.paths_up(tunnel.server_status())) == 2
            assert ping(lab.client, SERVER_TUNNEL_IP)
        assert tunnel.errors() == []
