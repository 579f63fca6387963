"""``ratbond demo``: a lab with three different WAN links, measured, reported, removed.

The demo is a list of steps sharing one :class:`DemoContext`. Each step does one thing
(bring the lab up, measure the links, ...) and leaves its figures in ``ctx.results``;
each report section turns figures into lines. Later phases (start a ratbond server and
client in the lab, bonded throughput, cut a link, failover gap) are further entries in
:data:`STEPS` and :data:`REPORT`; teardown always runs, on success, error and Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ratbond.lab.measure import iperf3, ping_rtt
from ratbond.lab.spec import LinkSpec, LinkSpecError, parse_links
from ratbond.lab.topology import Lab

DEFAULT_LINKS = "30/10:20ms,20:40ms,10:60ms:1%"


@dataclass
class DemoContext:
    """What the steps share: the settings, the running lab and the figures so far."""

    links: list[LinkSpec]
    seconds: float = 3.0
    out: Callable[[str], None] = print
    lab: Lab | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def require_lab(self) -> Lab:
        if self.lab is None:
            raise RuntimeError("this demo step needs the lab step before it")
        return self.lab

    def progress(self, text: str) -> None:
        self.out(f"      {text}")


Step = tuple[str, Callable[[DemoContext], None]]
ReportSection = Callable[[DemoContext], list[str]]


def step_lab_up(ctx: DemoContext) -> None:
    ctx.lab = Lab.up(ctx.links, name=None)
    for i, spec in enumerate(ctx.links, 1):
        ctx.progress(f"wan{i} {ctx.lab.wan_address(i)}  {spec.to_text()}")


def step_measure_links(ctx: DemoContext) -> None:
    """Raw goodput each way and RTT of every link, one at a time (no cross-talk)."""
    lab = ctx.require_lab()
    per_link: list[dict[str, Any]] = []
    for i, spec in enumerate(lab.links, 1):
        source = lab.wan_address(i)
        rtt = ping_rtt(lab.client, lab.server_public_ip, count=10, source=source)
        figures: dict[str, Any] = {"index": i, "spec": spec.to_text(),
                                   "rtt_ms": rtt.get("median_ms"), "ping_loss": rtt["loss"]}
        for direction, reverse in (("down", True), ("up", False)):
            result = iperf3(lab.client, lab.server, lab.server_public_ip,
                            seconds=ctx.seconds, reverse=reverse, bind=source)
            figures[f"{direction}_mbit"] = result["bits_per_second"] / 1e6
            figures[f"{direction}_retransmits"] = result["retransmits"]
        rtt_text = "n/a" if figures["rtt_ms"] is None else f"{figures['rtt_ms']:.1f} ms"
        ctx.progress(f"wan{i}: down {figures['down_mbit']:.1f} Mbit/s, up "
                     f"{figures['up_mbit']:.1f} Mbit/s, RTT {rtt_text}")
        per_link.append(figures)
    ctx.results["links"] = per_link


def report_links(ctx: DemoContext) -> list[str]:
    links = ctx.results.get("links")
    if not links:
        return []
    lines = ["Per-link raw TCP goodput (iperf3) and RTT (ICMP, median):",
             f"  {'link':<5} {'emulated as':<18} {'down Mbit/s':>16} {'up Mbit/s':>16} "
             f"{'RTT ms':>8}"]
    for fig, spec in zip(links, ctx.links, strict=True):
        lines.append(f"  wan{fig['index']:<2} {fig['spec']:<18} "
                     f"{_with_share(fig['down_mbit'], spec.down_mbit):>16} "
                     f"{_with_share(fig['up_mbit'], spec.up_mbit):>16} "
                     f"{'n/a' if fig['rtt_ms'] is None else format(fig['rtt_ms'], '.1f'):>8}")
    total_down = sum(f["down_mbit"] for f in links)
    total_up = sum(f["up_mbit"] for f in links)
    lines.append(f"  {'sum':<24} {total_down:>16.1f} {total_up:>16.1f}")
    return lines


def _with_share(mbit: float, capacity: float | None) -> str:
    if capacity is None:
        return f"{mbit:.1f}"
    return f"{mbit:.1f} ({mbit / capacity:.0%})"


STEPS: list[Step] = [
    ("bring up a lab with the emulated links", step_lab_up),
    ("measure each link alone", step_measure_links),
]
REPORT: list[ReportSection] = [report_links]


def run(ctx: DemoContext, steps: Sequence[Step] = STEPS,
        report: Sequence[ReportSection] = REPORT) -> None:
    """Run the steps in order with progress lines, print the report, always tear down."""
    started = time.monotonic()
    try:
        for k, (title, step) in enumerate(steps, 1):
            ctx.out(f"[{k}/{len(steps)}] {title}...")
            t0 = time.monotonic()
            step(ctx)
            ctx.progress(f"done in {time.monotonic() - t0:.1f} s")
    finally:
        if ctx.lab is not None:
            ctx.out("tearing the lab down...")
            ctx.lab.down()
    ctx.out("")
    for section in report:
        for line in section(ctx):
            ctx.out(line)
    ctx.out(f"demo finished in {time.monotonic() - started:.0f} s; nothing was left behind")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", default=DEFAULT_LINKS,
                        help="links to emulate (default: %(default)s; see 'ratbond lab up')")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each iperf3 measurement (default: %(default)s)")


def run_demo(args: argparse.Namespace) -> int:
    """Entry point for ``ratbond demo`` (root already checked by the CLI)."""
    try:
        links = parse_links(args.links)
    except LinkSpecError as exc:
        print(f"ratbond demo: error: {exc}", file=sys.stderr)
        return 2
    if not args.seconds > 0:
        print("ratbond demo: error: --seconds must be > 0", file=sys.stderr)
        return 2
    run(DemoContext(links=links, seconds=args.seconds,
                    out=lambda line: print(line, flush=True)))
    return 0
