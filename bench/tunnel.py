"""Bonded goodput: ratbond over lab links, next to raw links and kcptun, in one run.

Run as root from the repository root::

    python3 -m bench.tunnel [--seconds 8] [--links 30/10:20ms:0.1%,20:40ms,10:60ms:1%]

Two scenarios, each in its own lab (ratios hold because everything runs in the same run):

* **cpu**: two direct veth links (no emulator), so the tunnel itself is the bottleneck:
  raw TCP over one link, ratbond ``--aes`` over both links (1 and 8 flows, both directions,
  consistent hashing and round-robin), and kcptun (``--crypt aes``, fast3) over one link.
* **wan**: heterogeneous emulated links; each link's raw goodput is measured alone, then
  ratbond ``--aes`` with 8 flows (and 1 flow with round-robin) both directions; efficiency =
  bonded goodput / summed raw goodput of the links in that direction.  Latency added by the
  tunnel = ping RTT through the tunnel minus the best raw link's RTT.

Writes ``bench/results/tunnel.json`` (+ ``.png``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import iperf3, mbit, ping_rtt, write_bar_plot, write_result
from bench.kcptun_ref import run_kcptun
from ratbond.lab.bonded import SERVER_TUNNEL_IP, BondedTunnel
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab

SECRET = ["--aes", "--secret=ratbond-bench"]
DEFAULT_LINKS = "30/10:20ms:0.1%,20:40ms,10:60ms:1%"


def _log(text: str) -> None:
    print(text, flush=True)


def _tunnel_goodput(lab: Lab, tunnel: BondedTunnel, *, flows: int, reverse: bool,
                    seconds: float) -> float:
    result = iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=seconds,
                    parallel=flows, reverse=reverse)
    tunnel.check_alive()
    return float(result["bits_per_second"])


def _rtt_under_load(lab: Lab, seconds: float) -> float | None:
    """Median ping RTT through the tunnel while 8 flows download (latency under load)."""
    load = threading.Thread(target=iperf3, args=(lab.client, lab.server, SERVER_TUNNEL_IP),
                            kwargs={"seconds": seconds, "parallel": 8, "reverse": True})
    load.start()
    try:
        time.sleep(min(2.0, seconds / 3))
        median: float | None = ping_rtt(lab.client, SERVER_TUNNEL_IP, count=10,
                                        interval=0.1).get("median_ms")
    finally:
        load.join()
    return median


def cpu_scenario(seconds: float, log_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    direct = LinkSpec(None, None, direct=True)
    with Lab.up([direct, direct]) as lab:
        for reverse in (False, True):
            direction = "down" if reverse else "up"
            raw = iperf3(lab.client, lab.server, lab.server_public_ip, seconds=seconds,
                         reverse=reverse, bind=lab.wan_address(1))["bits_per_second"]
            rows.append({"scenario": "cpu", "tool": "raw link", "direction": direction,
                         "flows": 1, "bits_per_second": raw})
            _log(f"cpu  {direction:<4} raw TCP, one veth            {mbit(raw):>8.1f} Mbit/s")
            for flows in (1, 8):
                kcp = run_kcptun(lab, 1, "aes", flows, seconds, reverse=reverse,
                                 profile="lean")["bits_per_second"]
                rows.append({"scenario": "cpu", "tool": "kcptun aes (1 link)",
                             "direction": direction, "flows": flows, "bits_per_second": kcp})
                _log(f"cpu  {direction:<4} kcptun aes, {flows} flow(s), 1 link "
                     f"{mbit(kcp):>8.1f} Mbit/s")
        for balance in ("consistent", "roundrobin"):
            args = [*SECRET, f"--balance={balance}"]
            with BondedTunnel(lab.server, lab.client, lab.server_public_ip, args, args,
                              log_dir=log_dir) as tunnel:
                tunnel.start(paths=2)
                for reverse in (False, True):
                    direction = "down" if reverse else "up"
                    for flows in (1, 8):
                        bps = _tunnel_goodput(lab, tunnel, flows=flows, reverse=reverse,
                                              seconds=seconds)
                        rows.append({"scenario": "cpu", "tool": f"ratbond aes {balance}",
                                     "direction": direction, "flows": flows,
                                     "bits_per_second": bps})
                        _log(f"cpu  {direction:<4} ratbond aes {balance}, {flows} flow(s) "
                             f"{mbit(bps):>8.1f} Mbit/s")
    return rows


def wan_scenario(links: list[LinkSpec], seconds: float, log_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with Lab.up(links) as lab:
        capacity = {"up": 0.0, "down": 0.0}
        best_rtt = float("inf")
        for i in range(1, len(links) + 1):
            rtt = ping_rtt(lab.client, lab.server_public_ip, count=5,
                           source=lab.wan_address(i)).get("median_ms", float("inf"))
            best_rtt = min(best_rtt, rtt)
            for reverse in (False, True):
                direction = "down" if reverse else "up"
                raw = iperf3(lab.client, lab.server, lab.server_public_ip, seconds=seconds,
                             parallel=4, reverse=reverse, bind=lab.wan_address(i))
                bps = float(raw["bits_per_second"])
                capacity[direction] += bps
                rows.append({"scenario": "wan", "tool": f"raw link {i}",
                             "spec": links[i - 1].to_text(), "direction": direction,
                             "flows": 4, "bits_per_second": bps, "rtt_ms": rtt})
                _log(f"wan  {direction:<4} raw link {i} ({links[i - 1].to_text()}), 4 flows "
                     f"{mbit(bps):>8.1f} Mbit/s, RTT {rtt:.1f} ms")
        for balance, flow_counts in (("consistent", (1, 8)), ("roundrobin", (1, 8))):
            args = [*SECRET, f"--balance={balance}"]
            with BondedTunnel(lab.server, lab.client, lab.server_public_ip, args, args,
                              log_dir=log_dir) as tunnel:
                tunnel.start(paths=len(links))
                rtt = ping_rtt(lab.client, SERVER_TUNNEL_IP, count=10).get("median_ms")
                rows.append({"scenario": "wan", "tool": f"ratbond aes {balance}",
                             "metric": "rtt", "rtt_ms": rtt, "best_link_rtt_ms": best_rtt})
                _log(f"wan  ratbond {balance}: idle RTT through the tunnel {rtt} ms "
                     f"(best link {best_rtt:.1f} ms)")
                loaded = _rtt_under_load(lab, seconds)
                rows.append({"scenario": "wan", "tool": f"ratbond aes {balance}",
                             "metric": "rtt under load", "rtt_ms": loaded})
                _log(f"wan  ratbond {balance}: RTT through the tunnel under an 8-flow download "
                     f"{loaded} ms")
                for reverse in (False, True):
                    direction = "down" if reverse else "up"
                    for flows in flow_counts:
                        bps = _tunnel_goodput(lab, tunnel, flows=flows, reverse=reverse,
                                              seconds=seconds)
                        eff = bps / capacity[direction] if capacity[direction] else 0.0
                        rows.append({"scenario": "wan", "tool": f"ratbond aes {balance}",
                                     "direction": direction, "flows": flows,
                                     "bits_per_second": bps, "capacity": capacity[direction],
                                     "efficiency": round(eff, 3)})
                        _log(f"wan  {direction:<4} ratbond aes {balance}, {flows} flow(s) "
                             f"{mbit(bps):>8.1f} Mbit/s = {eff:.0%} of "
                             f"{mbit(capacity[direction]):.1f} Mbit/s summed")
    return rows


def plot(rows: list[dict[str, Any]]) -> None:
    measured = [r for r in rows if "bits_per_second" in r and r["scenario"] == "cpu"]
    if not measured:
        return  # the plot shows the CPU-bound scenario only
    labels = sorted({f"{r['direction']} {r['flows']}f" for r in measured})
    tools = sorted({r["tool"] for r in measured})
    series = {tool: [next((mbit(r["bits_per_second"]) for r in measured
                           if r["tool"] == tool and f"{r['direction']} {r['flows']}f" == lab),
                          0.0) for lab in labels] for tool in tools}
    write_bar_plot("tunnel", "CPU-bound goodput over direct veths (ratbond: 2 links)", labels,
                   series, "Mbit/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.tunnel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--links", default=DEFAULT_LINKS,
                   help="emulated links of the wan scenario (default "
                        f"{DEFAULT_LINKS.replace('%', '%%')})")
    p.add_argument("--only", choices=("cpu", "wan"), help="run one scenario")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/ratbond-bench"))
    args = p.parse_args(argv)
    links = [LinkSpec.parse(t) for t in args.links.split(",")]
    rows: list[dict[str, Any]] = []
    if args.only in (None, "cpu"):
        rows += cpu_scenario(args.seconds, args.log_dir)
    if args.only in (None, "wan"):
        rows += wan_scenario(links, args.seconds, args.log_dir)
    data = {"bench": "tunnel", "seconds": args.seconds, "links": args.links,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": rows}
    print(f"wrote {write_result('tunnel', data)}")
    plot(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
