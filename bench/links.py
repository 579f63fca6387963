"""Raw per-link goodput and RTT: the baseline every tunnel figure is a fraction of.

Run as root from the repository root::

    python3 -m bench.links [--seconds 5] [--links 30/10:20ms,20:40ms,10:60ms:1%,100:10ms,direct]

Builds one lab, then for each link alone: ICMP RTT (median of 20), iperf3 TCP goodput
client->server ("up") and server->client ("down", -R). The 100 Mbit/s link shows the
emulator's own ceiling; the direct veth shows what the machine does without one.
Writes ``bench/results/links.json`` and ``links.png`` (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

from bench.common import iperf3, mbit, ping_rtt, write_bar_plot, write_result
from ratbond.lab.spec import LinkSpec, parse_links
from ratbond.lab.topology import Lab

DEFAULT_LINKS = "30/10:20ms,20:40ms,10:60ms:1%,100:10ms,direct"


def measure_link(lab: Lab, i: int, seconds: float) -> dict[str, Any]:
    """One link alone: RTT, then goodput up and down, with shares of the emulated rate."""
    spec: LinkSpec = lab.links[i - 1]
    source = lab.wan_address(i)
    rtt = ping_rtt(lab.client, lab.server_public_ip, count=20, source=source, interval=0.05)
    row: dict[str, Any] = {"index": i, "spec": spec.to_text(), "rtt_ms": rtt.get("median_ms"),
                           "ping_loss": rtt["loss"]}
    for direction, reverse, capacity in (("up", False, spec.up_mbit),
                                         ("down", True, spec.down_mbit)):
        result = iperf3(lab.client, lab.server, lab.server_public_ip, seconds=seconds,
                        reverse=reverse, bind=source)
        row[f"{direction}_mbit"] = mbit(result["bits_per_second"])
        row[f"{direction}_retransmits"] = result["retransmits"]
        row[f"{direction}_capacity_mbit"] = capacity
        if capacity:
            row[f"{direction}_share"] = round(result["bits_per_second"] / (capacity * 1e6), 3)
    return row


def run(links: list[LinkSpec], seconds: float) -> dict[str, Any]:
    rows = []
    with Lab.up(links) as lab:
        for i in range(1, len(links) + 1):
            row = measure_link(lab, i, seconds)
            print(f"wan{i} {row['spec']:<16} up {row['up_mbit']:>9.2f} Mbit/s  down "
                  f"{row['down_mbit']:>9.2f} Mbit/s  RTT {row['rtt_ms'] or 0:.2f} ms",
                  flush=True)
            rows.append(row)
    return {"bench": "links", "seconds": seconds, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "python": platform.python_version()},
            "links": rows}


def plot(data: dict[str, Any]) -> None:
    emulated = [r for r in data["links"] if r["spec"] != "direct"]
    labels = [f"wan{r['index']}\n{r['spec']}" for r in emulated]
    write_bar_plot("links", "Raw TCP goodput per emulated link (iperf3)", labels, {
        "down capacity": [r["down_capacity_mbit"] or 0 for r in emulated],
        "down goodput": [r["down_mbit"] for r in emulated],
        "up capacity": [r["up_capacity_mbit"] or 0 for r in emulated],
        "up goodput": [r["up_mbit"] for r in emulated]}, "Mbit/s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.links", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--links", type=parse_links, default=parse_links(DEFAULT_LINKS))
    args = p.parse_args(argv)
    data = run(args.links, args.seconds)
    print(f"wrote {write_result('links', data)}")
    plot(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
