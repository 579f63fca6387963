"""Crash-only: kill -9 either end at random points, 20 times in a row, during a transfer.

A router's ratbond is killed by the OOM killer, a watchdog or a power cut, and systemd
starts it again; the VPS's is restarted the same way. Nothing may need a human after that:
every restart must come up clean (whatever the dead process left is replaced, never an
error), the peer must recover by itself, and a TCP transfer running through the tunnel the
whole time must arrive intact. After the last stop both namespaces must look exactly as
before the first start (links, rules, routes in every table, nftables).

The kill points are random (seed printed; ``RATBOND_RESTART_SEED`` replays one): some
right after a restart, before the tunnel was back, so kills also land in the middle of a
handshake or WAN discovery.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path

import pytest
from bench.soak import leftovers, wait_until_empty

from ratbond.lab.bonded import SERVER_TUNNEL_IP, BondedTunnel, TunnelError, wait_until
from ratbond.lab.netns import Namespace
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from tests.e2e.tunnel_util import XFER, finish, start_listener

pytestmark = [pytest.mark.root, pytest.mark.slow]

KILLS = 20
LIVENESS = ["--hello-interval=0.5", "--dead-after=2"]
#: A killed client is replaced by one that needs a new session; a killed server is noticed
#: after 1.5 s of silence (README): both well inside this.
RECOVER_WITHIN = 10.0
RATE = 200_000  # bytes/s of the transfer that runs across every kill


def _ours(line: str) -> bool:
    """IPv6 link-local and multicast routes of the lab's own links come and go as the
    kernel's address autoconfiguration runs (not ratbond's doing): left out."""
    return not any(word in line for word in ("fe80:", "ff00::/8"))


def net_snapshot(ns: Namespace) -> dict[str, list[str]]:
    """What ratbond may change in a namespace, in a comparable form."""
    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in ns.output("ip", "-o", "link", "show").splitlines())
    return {"links": links,
            "rules": ns.output("ip", "rule").splitlines(),
            "rules6": ns.output("ip", "-6", "rule").splitlines(),
            "routes": sorted(ns.output("ip", "-4", "route", "show", "table",
                                       "all").splitlines()),
            "routes6": sorted(filter(_ours, ns.output("ip", "-6", "route", "show", "table",
                                                      "all").splitlines())),
            "nft": ns.output("nft", "list", "ruleset").splitlines()}


def tunnel_back(tunnel: BondedTunnel, paths: int) -> bool:
    tunnel.check_alive()
    if len(tunnel.paths_up(tunnel.client_status())) != paths:
        return False
    if len(tunnel.paths_up(tunnel.server_status())) != paths:
        return False
    return tunnel.client_ns.run("ping", "-c", "1", "-W", "1", SERVER_TUNNEL_IP,
                                check=False).returncode == 0


def test_twenty_kill_9s_in_a_row_leave_nothing_behind(tmp_path: Path) -> None:
    seed = int(os.environ.get("RATBOND_RESTART_SEED") or random.randrange(1 << 30))
    print(f"RATBOND_RESTART_SEED={seed}")
    rng = random.Random(seed)
    links = [LinkSpec.parse("*:5ms")] * 2
    started = time.monotonic()
    with Lab.up(links) as lab:
        before = {"client": net_snapshot(lab.client), "server": net_snapshot(lab.server)}
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, LIVENESS,
                              LIVENESS, log_dir=tmp_path)
        recoveries: dict[str, list[float]] = {"client": [], "server": []}
        with tunnel:
            tunnel.start(paths=2)
            size = RATE * 70
            receiver = start_listener(lab.server, "tcp-recv", SERVER_TUNNEL_IP, "5001")
            sender = lab.client.popen(sys.executable, XFER, "tcp-send", SERVER_TUNNEL_IP,
                                      "5001", str(size), f"restarts-{seed}", str(RATE),
                                      stdout=-1, stderr=-1)
            settled = True
            for kill in range(KILLS):
                role = rng.choice(("client", "server"))
                time.sleep(rng.uniform(0.05, 1.5))
                proc = tunnel.client if role == "client" else tunnel.server
                assert proc is not None
                if proc.poll() is not None:
                    raise TunnelError(f"kill {kill}: the {role} had exited by itself "
                                      f"({proc.returncode})\n{tunnel.logs()}")
                os.kill(proc.pid, signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL
                ns = lab.client if role == "client" else lab.server
                left = wait_until_empty(lambda ns=ns: leftovers(ns), 3.0)  # type: ignore[misc]
                assert not left, f"kill {kill} ({role}, seed {seed}) left {left}"
                restart = time.monotonic()
                (tunnel.start_client if role == "client" else tunnel.start_server)()
                # Now and then the next kill comes before the tunnel is back.
                settled = rng.random() >= 0.25
                if settled:
                    try:
                        wait_until(lambda: tunnel_back(tunnel, 2), RECOVER_WITHIN + 10,
                                   interval=0.1, what=f"tunnel back after kill {kill}")
                    except TimeoutError as exc:
                        raise TunnelError(f"{exc} (seed {seed}, {role})\n{tunnel.logs()}") \
                            from None
                    recoveries[role].append(round(time.monotonic() - restart, 2))
            if not settled:
                wait_until(lambda: tunnel_back(tunnel, 2), RECOVER_WITHIN + 10, interval=0.1,
                           what="tunnel back after the last kill")
            sent = finish(sender, timeout=120)
            got = finish(receiver, timeout=30)
            assert tunnel.errors() == [], "a traceback in a log"
        elapsed = time.monotonic() - started
        after = {"client": net_snapshot(lab.client), "server": net_snapshot(lab.server)}
    every = recoveries["client"] + recoveries["server"]
    print(f"recovery after kill -9 (s): client {recoveries['client']}, server "
          f"{recoveries['server']}; median {statistics.median(every):.2f}, worst "
          f"{max(every):.2f}; {elapsed:.0f} s in all")
    assert got["sha256"] == sent["sha256"] and got["bytes"] == size
    for role, snap in after.items():
        for kind, lines in snap.items():
            assert lines == before[role][kind], (
                f"{role} {kind} differ from before the first start: now "
                f"{sorted(set(lines) - set(before[role][kind]))}, gone "
                f"{sorted(set(before[role][kind]) - set(lines))}")
    assert max(every) <= RECOVER_WITHIN, recoveries
    assert recoveries["client"] and recoveries["server"], recoveries
