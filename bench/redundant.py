"""Redundancy for real time: what a small-packet stream sees over lossy links.

Run as root from the repository root::

    python3 -m bench.redundant [--links 30:10ms:5%,20:20ms:5%,10:30ms:5%] [--runs 3]
                               [--seconds 20] [--schedulers redundant,adaptive]

One lab of links that all lose packets at random (5 % by default). For each scheduler
(``--balance-<name>`` on both ends, ``--aes``), ``--runs`` times in a fresh tunnel, a
50 datagrams/s sequence-numbered UDP stream (160-byte payloads: a voice frame) runs in each
direction at once (``ratbond.lab.seqstream``). Per direction: the datagrams lost (KCP
repairs a loss on its own path, so "lost" means never delivered at all), and the one-way
delay of each datagram's first arrival -- median, 99th percentile, worst -- next to the
best link's own one-way delay (half its ping RTT, measured alone in the same lab). The
issue's target for ``redundant``: < 0.1 % lost and a p99 within 10 ms of the best link.
``adaptive`` (one copy, repaired by retransmission) is the comparison.

Prints a table; writes ``bench/results/redundant.json``. The lab, the tunnels and the
secret are removed on exit, error and Ctrl-C.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.aggregation import Settings, check_schedulers, fresh_tunnel, private_secret
from bench.common import write_result
from ratbond.lab.bonded import CLIENT_TUNNEL_IP, SERVER_TUNNEL_IP
from ratbond.lab.measure import free_port, ping_rtt
from ratbond.lab.seqstream import SeqStream
from ratbond.lab.spec import parse_links
from ratbond.lab.topology import Lab

DEFAULT_LINKS = "30:10ms:5%,20:20ms:5%,10:30ms:5%"
STREAM_PPS = 50.0
STREAM_PORTS = 8
#: The issue's targets for --balance-redundant.
TARGET_LOSS = 0.001
TARGET_P99_ABOVE_BEST_MS = 10.0


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` quantile by the nearest-rank rule (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def best_link_one_way_ms(lab: Lab) -> float:
    """Half the lowest ping RTT among the links, each measured alone."""
    rtts = []
    for index in range(1, len(lab.links) + 1):
        rtt = ping_rtt(lab.client, lab.server_public_ip, count=20,
                       source=lab.wan_address(index), interval=0.05)
        if rtt.get("median_ms") is not None:
            rtts.append(float(rtt["median_ms"]))
    if not rtts:
        raise SystemExit("bench.redundant: no link answered a ping")
    return min(rtts) / 2.0


def measure(lab: Lab, settings: Settings, scheduler: str, seconds: float,
            label: str) -> dict[str, Any]:
    """Both streams at once through a fresh tunnel; loss and delays per direction."""
    with fresh_tunnel(lab, settings, scheduler, label):
        streams = {
            "up": SeqStream(lab.client, lab.server, SERVER_TUNNEL_IP, free_port(lab.server),
                            seconds, STREAM_PPS, STREAM_PORTS),
            "down": SeqStream(lab.server, lab.client, CLIENT_TUNNEL_IP, free_port(lab.client),
                              seconds, STREAM_PPS, STREAM_PORTS),
        }
        for stream in streams.values():
            stream.start()
        try:
            out: dict[str, Any] = {}
            for direction, stream in streams.items():
                seen = stream.finish()
                delays = stream.delays_ms
                out[direction] = {
                    "sent": seen.sent, "lost": seen.lost, "duplicates": seen.duplicates,
                    "loss": seen.lost / seen.sent if seen.sent else None,
                    "p50_ms": percentile(delays, 0.50), "p99_ms": percentile(delays, 0.99),
                    "max_ms": max(delays) if delays else None,
                }
            return out
        finally:
            for stream in streams.values():
                stream.stop()


def summarize(runs: Sequence[dict[str, Any]], best_ms: float) -> dict[str, Any]:
    """Median and worst over runs, per direction; whether the targets hold in every run."""
    out: dict[str, Any] = {}
    for direction in ("up", "down"):
        losses = [r[direction]["loss"] for r in runs if r[direction]["loss"] is not None]
        p99s = [r[direction]["p99_ms"] for r in runs if r[direction]["p99_ms"] is not None]
        p50s = [r[direction]["p50_ms"] for r in runs if r[direction]["p50_ms"] is not None]
        out[direction] = {
            "loss_median": statistics.median(losses) if losses else None,
            "loss_worst": max(losses) if losses else None,
            "p50_median_ms": statistics.median(p50s) if p50s else None,
            "p99_median_ms": statistics.median(p99s) if p99s else None,
            "p99_worst_ms": max(p99s) if p99s else None,
            "meets_target": bool(losses and p99s and max(losses) < TARGET_LOSS
                                 and max(p99s) <= best_ms + TARGET_P99_ABOVE_BEST_MS),
        }
    return out


def _cell(value: float | None, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}{unit}"


def table(results: dict[str, Any]) -> list[str]:
    best = results["best_link_one_way_ms"]
    lines = [f"links {results['links']}; best link one-way {best:.1f} ms; "
             f"{results['runs']} fresh tunnel(s) per scheduler, {results['seconds']:g} s "
             f"streams at {STREAM_PPS:g}/s each way",
             f"{'scheduler':<11} {'dir':<5} {'lost med/worst':>16} {'p50':>8} "
             f"{'p99 med/worst':>16} {'target':>7}"]
    for name, summary in results["schedulers"].items():
        for direction in ("up", "down"):
            cell = summary["summary"][direction]
            lost = (f"{_cell(cell['loss_median'], 100, 2, '%')}/"
                    f"{_cell(cell['loss_worst'], 100, 2, '%')}")
            p99 = f"{_cell(cell['p99_median_ms'])}/{_cell(cell['p99_worst_ms'])} ms"
            lines.append(f"{name:<11} {direction:<5} {lost:>16} "
                         f"{_cell(cell['p50_median_ms'], unit=' ms'):>8} {p99:>16} "
                         f"{'met' if cell['meets_target'] else 'not met':>7}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.redundant",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--links", default=DEFAULT_LINKS)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--schedulers", default="redundant,adaptive")
    p.add_argument("--log-dir", type=Path,
                   default=Path("/tmp/ratbond-bench") / time.strftime("redundant-%H%M%S"))
    args = p.parse_args(argv)
    if args.runs < 1 or args.seconds < 1:
        p.error("--runs must be at least 1 and --seconds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    schedulers = [s for s in args.schedulers.split(",") if s]
    check_schedulers(schedulers)
    links = parse_links(args.links)
    results: dict[str, Any] = {"links": args.links, "runs": args.runs,
                               "seconds": args.seconds, "schedulers": {}}
    with private_secret() as secret_file, Lab.up(links) as lab:
        settings = Settings(schedulers=schedulers, runs=args.runs, seconds=int(args.seconds),
                            link_sets=[], mptcp=False, failover=False, log_dir=args.log_dir,
                            secret_file=secret_file)
        best = best_link_one_way_ms(lab)
        results["best_link_one_way_ms"] = best
        print(f"bench.redundant: lab up ({args.links}); best link one-way {best:.1f} ms",
              flush=True)
        for name in schedulers:
            runs = []
            for run in range(1, args.runs + 1):
                row = measure(lab, settings, name, args.seconds, f"{name}-{run}")
                runs.append(row)
                print(f"  {name} run {run}/{args.runs}: " + ", ".join(
                    f"{d} lost {row[d]['lost']}/{row[d]['sent']} p99 "
                    f"{_cell(row[d]['p99_ms'])} ms" for d in ("up", "down")), flush=True)
            results["schedulers"][name] = {"runs": runs, "summary": summarize(runs, best)}
            write_result("redundant", results)
    for line in table(results):
        print(line)
    print(f"wrote {write_result('redundant', results)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench.redundant: interrupted; everything it made was removed", file=sys.stderr)
        sys.exit(130)
