"""``ratbond demo``: a lab with three different WAN links, the bond over them, a cut link.

The demo is a list of steps sharing one :class:`DemoContext`. Each step does one thing
(bring the lab up, measure the links, start the tunnel, measure the bond, cut a link, ...)
and leaves its figures in ``ctx.results``; each report section turns figures into lines.
Whatever a step starts, it registers for teardown on ``ctx.cleanup``, so the ratbond
processes, pollers and the lab itself go away on success, error and Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ratbond.config import CommonSettings
from ratbond.lab.bonded import CLIENT_STATUS_PORT, SERVER_TUNNEL_IP, BondedTunnel, TunnelError
from ratbond.lab.failover import (
    GAP_FRACTION,
    Sample,
    StatusPoller,
    Transfer,
    failover_gap,
    goodput_by_wan,
    leave_and_rejoin,
    parse_intervals,
)
from ratbond.lab.measure import MeasureError, iperf3, iperf3_server, ping_rtt
from ratbond.lab.netns import NetnsError, list_namespaces
from ratbond.lab.spec import LinkSpec, LinkSpecError, parse_links
from ratbond.lab.state import LabError, state_path
from ratbond.lab.topology import Lab

DEFAULT_LINKS = "30/10:20ms,20:40ms,10:60ms:1%"
BOND_FLOWS = 8
# The liveness defaults of `ratbond server/client` (config.CommonSettings): the demo runs
# with them, so the failover step shows what a user gets, and the report names them.
HELLO_INTERVAL = CommonSettings.hello_interval
DEAD_AFTER = CommonSettings.dead_after
DEFAULT_SCHEDULER = CommonSettings.balance
# Failover timeline (seconds): goodput settles, the link is cut, held down a moment after
# it left, restored, and the transfer runs on long enough to show the recovery.
FAILOVER_WARMUP = 2.0
FAILOVER_HOLD = 0.5
FAILOVER_REJOIN = 2.0
FAILOVER_TAIL = 1.0
WATCH_PERIOD = 0.05  # seconds between status readings of the client during a failover


@dataclass
class DemoContext:
    """What the steps share: the settings, what is running, and the figures so far."""

    links: list[LinkSpec]
    seconds: int = 3
    out: Callable[[str], None] = print
    lab: Lab | None = None
    tunnel: BondedTunnel | None = None
    workdir: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def require_lab(self) -> Lab:
        if self.lab is None:
            raise RuntimeError("this demo step needs the lab step before it")
        return self.lab

    def require_tunnel(self) -> BondedTunnel:
        if self.tunnel is None:
            raise RuntimeError("this demo step needs the tunnel step before it")
        return self.tunnel

    def progress(self, text: str) -> None:
        self.out(f"      {text}")


Step = tuple[str, Callable[[DemoContext], None]]
ReportSection = Callable[[DemoContext], list[str]]


# ----- steps --------------------------------------------------------------------------------


def step_lab_up(ctx: DemoContext) -> None:
    ctx.lab = Lab.up(ctx.links, name=None)
    ctx.cleanup.callback(ctx.lab.down)
    ctx.results["lab"] = {"name": ctx.lab.name, "prefix": ctx.lab.prefix}
    ctx.progress(f"lab {ctx.lab.name!r}, namespaces {ctx.lab.prefix}*")
    for i, spec in enumerate(ctx.links, 1):
        ctx.progress(f"wan{i} {ctx.lab.wan_address(i)}  {spec.to_text()}")


def step_measure_links(ctx: DemoContext) -> None:
    """Raw goodput each way and RTT of every link, one at a time (no cross-talk)."""
    lab = ctx.require_lab()
    per_link: list[dict[str, Any]] = []
    for i, spec in enumerate(lab.links, 1):
        source = lab.wan_address(i)
        rtt = ping_rtt(lab.client, lab.server_public_ip, count=_pings(ctx), source=source)
        figures: dict[str, Any] = {"index": i, "spec": spec.to_text(),
                                   "rtt_ms": rtt.get("median_ms"), "ping_loss": rtt["loss"]}
        for direction, reverse in (("down", True), ("up", False)):
            result = iperf3(lab.client, lab.server, lab.server_public_ip,
                            seconds=ctx.seconds, reverse=reverse, bind=source)
            figures[f"{direction}_mbit"] = result["bits_per_second"] / 1e6
            figures[f"{direction}_retransmits"] = result["retransmits"]
        ctx.progress(f"wan{i}: down {figures['down_mbit']:.1f} Mbit/s, up "
                     f"{figures['up_mbit']:.1f} Mbit/s, RTT {_ms(figures['rtt_ms'])}")
        per_link.append(figures)
    ctx.results["links"] = per_link


def step_tunnel_up(ctx: DemoContext) -> None:
    """Server and client with ``--aes`` and a secret made for this run, all paths up."""
    lab = ctx.require_lab()
    took = _start_tunnel(ctx, [])
    ctx.results["tunnel"] = {"paths": len(lab.links), "seconds_to_up": took,
                             "hello_interval_s": HELLO_INTERVAL, "dead_after_s": DEAD_AFTER}
    workdir = _workdir(ctx)
    ctx.results["tunnel"]["workdir"] = str(workdir)
    ctx.progress(f"--aes, a secret made for this run in {workdir / 'secret'} (mode 0600)")
    ctx.progress(f"{len(lab.links)} paths up on both ends after {took:.1f} s")


def step_measure_bond(ctx: DemoContext) -> None:
    """Goodput through the tunnel with many flows each way, one flow, and the tunnel RTT."""
    lab = ctx.require_lab()
    figures: dict[str, Any] = {}
    for key, flows, reverse in (("down", BOND_FLOWS, True), ("up", BOND_FLOWS, False),
                                ("down_1flow", 1, True), ("up_1flow", 1, False)):
        result = iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=ctx.seconds,
                        parallel=flows, reverse=reverse)
        figures[f"{key}_mbit"] = result["bits_per_second"] / 1e6
        ctx.progress(f"{flows} flow{'s' if flows > 1 else ''} {key.split('_')[0]}: "
                     f"{figures[f'{key}_mbit']:.1f} Mbit/s")
    rtt = ping_rtt(lab.client, SERVER_TUNNEL_IP, count=_pings(ctx))
    figures["rtt_ms"] = rtt.get("median_ms")
    figures["ping_loss"] = rtt["loss"]
    ctx.progress(f"RTT through the tunnel {_ms(figures['rtt_ms'])}")
    ctx.results["bond"] = figures


def step_failover(ctx: DemoContext) -> None:
    """Cut the link carrying one download twice: silently (blackhole), then visibly (down)."""
    lab = ctx.require_lab()
    tunnel = ctx.require_tunnel()
    if len(lab.links) < 2:
        ctx.progress("skipped: with one link there is nothing to fail over to")
        return
    # A direct link has no emulator to blackhole; taking its interface down still works.
    kinds = ["wan-down"] if any(s.direct for s in lab.links) else ["blackhole", "wan-down"]
    runs = []
    for kind in kinds:
        tunnel.wait_paths_up(len(lab.links), timeout=20)
        run_ = run_failover(lab, tunnel, kind, ctx.progress)
        runs.append(run_)
        ctx.progress(_failover_line(run_))
    ctx.results["failover"] = runs


def step_roundrobin(ctx: DemoContext) -> None:
    """Restart both ends with ``--balance-roundrobin``: one TCP flow then uses every link."""
    lab = ctx.require_lab()
    tunnel = ctx.require_tunnel()
    tunnel.stop()
    took = _start_tunnel(ctx, ["--balance-roundrobin"])
    ctx.progress(f"restarted with --balance-roundrobin, paths up after {took:.1f} s")
    figures: dict[str, Any] = {}
    for key, reverse in (("down", True), ("up", False)):
        result = iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=ctx.seconds,
                        reverse=reverse)
        figures[f"{key}_mbit"] = result["bits_per_second"] / 1e6
        ctx.progress(f"1 flow {key}: {figures[f'{key}_mbit']:.1f} Mbit/s")
    ctx.results["roundrobin"] = figures


def _pings(ctx: DemoContext) -> int:
    """Probes per RTT figure: ten, or five when the measurements are kept short."""
    return min(10, 5 * ctx.seconds)


def _workdir(ctx: DemoContext) -> Path:
    """This run's private directory (mode 0700): the secret file and the tunnel's logs."""
    if ctx.workdir is None:
        ctx.workdir = Path(tempfile.mkdtemp(prefix="ratbond-demo-"))
        ctx.cleanup.callback(shutil.rmtree, ctx.workdir, ignore_errors=True)
        secret_file = ctx.workdir / "secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secrets.token_urlsafe(32))
    return ctx.workdir


def _start_tunnel(ctx: DemoContext, extra: Sequence[str]) -> float:
    """(Re)start server and client in the lab; returns the seconds until all paths were up.

    The secret never appears on a command line: it is written once per run to a file only
    root can read, inside a private directory removed at teardown.
    """
    lab = ctx.require_lab()
    workdir = _workdir(ctx)
    # Liveness flags are left at their defaults: the demo shows what a user gets.
    args = ["--aes", f"--secret-file={workdir / 'secret'}", *extra]
    tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, server_args=args,
                          client_args=args, log_dir=workdir)
    ctx.tunnel = tunnel
    ctx.cleanup.callback(tunnel.stop)
    started = time.monotonic()
    tunnel.start(paths=len(lab.links), timeout=30)
    return time.monotonic() - started


# ----- failover -----------------------------------------------------------------------------


def run_failover(lab: Lab, tunnel: BondedTunnel, kind: str,
                 progress: Callable[[str], None] = lambda _text: None) -> dict[str, Any]:
    """One download through the tunnel while the link carrying it is cut and restored.

    ``kind`` is ``blackhole`` (the emulator drops everything: only HELLO liveness can tell)
    or ``wan-down`` (the client's interface goes down: netlink tells at once). Returns the
    cut link, when its path left and rejoined the bond, and the gap seen by iperf3.
    """
    cut, restore = _cut_actions(lab, kind)
    expect_leave = DEAD_AFTER + 1.0 if kind == "blackhole" else 1.0
    seconds = math.ceil(FAILOVER_WARMUP + expect_leave + FAILOVER_HOLD + FAILOVER_REJOIN
                        + FAILOVER_TAIL)
    with StatusPoller(lab.client, CLIENT_STATUS_PORT, period=WATCH_PERIOD) as watch:
        first = watch.wait(lambda _s: True, timeout=10)
        if first is None:
            raise TunnelError("the client's status endpoint did not answer")
        with iperf3_server(lab.server) as port:
            transfer = Transfer.start(lab.client, SERVER_TUNNEL_IP, port, seconds,
                                      clock=watch.now)
            try:
                marks = _cut_during(watch, first, cut, restore, expect_leave)
                code, raw = transfer.finish()
            finally:
                transfer.stop()
        wan = marks.wan
        # The transfer may end before the path is back: keep watching a while for it.
        watch.wait(lambda s: wan in s.up_wans, timeout=10, after=marks.restored_at)
        moves = leave_and_rejoin(watch.samples(), lambda s: wan in s.up_wans,
                                 marks.cut_at, marks.restored_at)
        per_wan = goodput_by_wan(watch.samples(), marks.started_at)
    tunnel.check_alive()  # a cut must never take a ratbond end down with it
    if "error" in raw:
        raise MeasureError(f"iperf3 through the tunnel (rc {code}): {raw['error']}")
    try:
        intervals = parse_intervals(raw)
    except ValueError as exc:
        raise MeasureError(f"iperf3 through the tunnel: {exc}") from None
    cut_at = marks.cut_at - marks.started_at
    gap = failover_gap(intervals, cut_at)
    progress(f"{kind}: cut {wan} {cut_at:.1f} s into a {seconds} s download")
    return {
        "kind": kind, "wan": wan, "transfer_s": seconds, "cut_at_s": cut_at,
        "left_after_s": moves.left_after(marks.cut_at),
        "rejoined_after_s": moves.rejoined_after(marks.restored_at),
        "gap_s": None if gap is None else gap.seconds,
        "gap_starts_after_cut_s": None if gap is None else gap.starts_after_cut,
        "baseline_mbit": None if gap is None else gap.baseline_mbit,
        "intervals": [(round(i.start, 2), round(i.bits_per_second / 1e6, 2))
                      for i in intervals],
        "per_wan_mbit": {w: [(t, round(v, 2)) for t, v in points]
                         for w, points in sorted(per_wan.items())},
    }


@dataclass(frozen=True)
class CutMarks:
    """One cut on the poller's clock: the link cut, when data began, was cut, restored."""

    wan: str
    started_at: float
    cut_at: float
    restored_at: float


def _cut_during(watch: StatusPoller, first: Sample, cut: Callable[[int], None],
                restore: Callable[[int], None], expect_leave: float) -> CutMarks:
    """Drive one cut while the transfer runs: the link carrying most of it goes.

    iperf3's timeline starts when its data starts to flow, which the poller sees as the
    client's received bytes jumping (the control connection carries only a few hundred).
    """
    base = sum(first.rx_by_wan.values())
    started = watch.wait(lambda s: sum(s.rx_by_wan.values()) - base > 30_000, timeout=15)
    if started is None:
        raise MeasureError("the failover download never started through the tunnel")
    time.sleep(max(0.0, started.t + FAILOVER_WARMUP - watch.now()))
    now = (watch.latest() or started).rx_by_wan
    before = started.rx_by_wan
    wan = max(now, key=lambda w: now[w] - before.get(w, 0))
    index = int(wan.removeprefix("wan"))
    cut_at = watch.now()
    cut(index)
    left = watch.wait(lambda s: wan not in s.up_wans, timeout=expect_leave + 3, after=cut_at)
    time.sleep(max(0.0, (left.t if left else watch.now()) + FAILOVER_HOLD - watch.now()))
    restored_at = watch.now()
    restore(index)
    watch.wait(lambda s: wan in s.up_wans, timeout=FAILOVER_REJOIN, after=restored_at)
    return CutMarks(wan=wan, started_at=started.t, cut_at=cut_at, restored_at=restored_at)


def _cut_actions(lab: Lab, kind: str) -> tuple[Callable[[int], None], Callable[[int], None]]:
    if kind == "blackhole":
        return (lambda i: lab.link(i).blackhole()), (lambda i: lab.link(i).restore())
    if kind == "wan-down":
        return (lambda i: lab.set_wan_updown(i, False)), (lambda i: lab.set_wan_updown(i, True))
    raise ValueError(f"unknown cut {kind!r}: blackhole or wan-down")


# ----- report -------------------------------------------------------------------------------


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
    total_down, total_up = _link_sums(ctx)
    lines.append(f"  {'sum':<24} {total_down:>16.1f} {total_up:>16.1f}")
    return lines


def report_bond(ctx: DemoContext) -> list[str]:
    bond = ctx.results.get("bond")
    if not bond:
        return []
    total_down, total_up = _link_sums(ctx)
    lines = ["", f"Bonded through the tunnel (ratbond --aes, default scheduler "
                 f"--balance-{DEFAULT_SCHEDULER}):",
             f"  {BOND_FLOWS} flows down  {bond['down_mbit']:7.1f} Mbit/s  "
             f"{_share(bond['down_mbit'], total_down)} of the links' sum",
             f"  {BOND_FLOWS} flows up    {bond['up_mbit']:7.1f} Mbit/s  "
             f"{_share(bond['up_mbit'], total_up)} of the links' sum",
             f"  1 flow down   {bond['down_1flow_mbit']:7.1f} Mbit/s  "
             f"{_share(bond['down_1flow_mbit'], total_down)} of the links' sum"]
    if "up_1flow_mbit" in bond:
        lines.append(f"  1 flow up     {bond['up_1flow_mbit']:7.1f} Mbit/s  "
                     f"{_share(bond['up_1flow_mbit'], total_up)} of the links' sum")
    lines.append(f"  RTT via the tunnel {_ms(bond['rtt_ms'])} (ICMP, median)")
    rr = ctx.results.get("roundrobin")
    if rr:
        lines += ["Bonded, one flow sprayed over every path (--balance-roundrobin):",
                  f"  1 flow down   {rr['down_mbit']:7.1f} Mbit/s  "
                  f"{_share(rr['down_mbit'], total_down)} of the links' sum",
                  f"  1 flow up     {rr['up_mbit']:7.1f} Mbit/s  "
                  f"{_share(rr['up_mbit'], total_up)} of the links' sum"]
    return lines


def report_failover(ctx: DemoContext) -> list[str]:
    runs = ctx.results.get("failover")
    if not runs:
        return []
    lines = ["", f"Failover (1 TCP download, 0.1 s intervals; HELLO every {HELLO_INTERVAL:g} s, "
                 f"dead after {DEAD_AFTER:g} s):"]
    lines += [f"  {_failover_line(run_)}" for run_ in runs]
    lines += [f"  gap = longest run of 0.1 s intervals under {GAP_FRACTION:.0%} of the median "
              "goodput before", "  the cut (TCP's own retransmission back-off included)"]
    return lines


def _failover_line(run_: dict[str, Any]) -> str:
    what = {"blackhole": "blackholed", "wan-down": "set down"}.get(run_["kind"], run_["kind"])
    gap = "n/a" if run_["gap_s"] is None else f"{run_['gap_s']:.1f} s"
    left = run_["left_after_s"]
    back = run_["rejoined_after_s"]
    return (f"{run_['wan']} {what:<10}: gap {gap}, path left the bond "
            f"{'never' if left is None else 'after ' + format(left, '.1f') + ' s'}, rejoined "
            f"{'never' if back is None else format(back, '.1f') + ' s after the restore'}")


def _link_sums(ctx: DemoContext) -> tuple[float, float]:
    links = ctx.results.get("links") or []
    return sum(f["down_mbit"] for f in links), sum(f["up_mbit"] for f in links)


def _with_share(mbit: float, capacity: float | None) -> str:
    if capacity is None:
        return f"{mbit:.1f}"
    return f"{mbit:.1f} ({mbit / capacity:.0%})"


def _share(mbit: float, total: float) -> str:
    return f"{mbit / total:4.0%}" if total > 0 else "n/a"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


STEPS: list[Step] = [
    ("bring up a lab with the emulated links", step_lab_up),
    ("measure each link alone", step_measure_links),
    ("start a ratbond server and client in the lab", step_tunnel_up),
    ("measure the bond", step_measure_bond),
    ("cut the link carrying a download, restore it", step_failover),
    ("one flow with --balance-roundrobin", step_roundrobin),
]
REPORT: list[ReportSection] = [report_links, report_bond, report_failover]


# ----- driver -------------------------------------------------------------------------------


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
        ctx.out("tearing everything down...")
        ctx.cleanup.close()
    ctx.out("")
    for section in report:
        for line in section(ctx):
            ctx.out(line)
    left = _leftovers(ctx)
    ctx.out(f"demo finished in {time.monotonic() - started:.0f} s; "
            + (f"LEFT BEHIND: {', '.join(left)}" if left else "nothing was left behind"))


def _leftovers(ctx: DemoContext) -> list[str]:
    if ctx.lab is None:
        return []
    left = list_namespaces(ctx.lab.prefix)
    if state_path(ctx.lab.name).exists():
        left.append(str(state_path(ctx.lab.name)))
    if ctx.workdir is not None and ctx.workdir.exists():
        left.append(str(ctx.workdir))
    return left


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--links", default=DEFAULT_LINKS,
                        help="links to emulate (default: %(default)s; see 'ratbond lab up')")
    parser.add_argument("--seconds", type=_whole_seconds, default=3,
                        help="length of each iperf3 measurement, whole seconds "
                             "(default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", dest="json_path",
                        help="also write every figure to FILE as JSON")


def _whole_seconds(text: str) -> int:
    """iperf3 takes whole seconds (it reads ``-t 0.5`` as 0: run forever)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole seconds, like 3") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def run_demo(args: argparse.Namespace) -> int:
    """Entry point for ``ratbond demo`` (root already checked by the CLI)."""
    try:
        links = parse_links(args.links)
    except LinkSpecError as exc:
        print(f"ratbond demo: error: {exc}", file=sys.stderr)
        return 2
    ctx = DemoContext(links=links, seconds=args.seconds,
                      out=lambda line: print(line, flush=True))
    try:
        run(ctx)
    except (TunnelError, MeasureError, NetnsError, TimeoutError, subprocess.SubprocessError,
            LabError) as exc:
        print(f"ratbond demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(ctx.results, indent=2) + "\n")
    plot = plot_failover(ctx.results.get("failover") or [], _plot_path(args))
    if plot is not None:
        print(f"per-path goodput over time: {plot}", flush=True)
    return 0


def _plot_path(args: argparse.Namespace) -> Path:
    """Next to ``--json`` when given, else in the current directory."""
    if args.json_path:
        return Path(args.json_path).with_suffix(".png")
    return Path("ratbond-demo.png")


def plot_failover(runs: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """A PNG of per-path goodput over each failover download (stacked, one panel per cut);
    None without matplotlib (an optional extra) or without data."""
    if not runs or not any(run_.get("per_wan_mbit") for run_ in runs):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), squeeze=False)
    for ax, run_ in zip(axes[:, 0], runs, strict=True):
        series = run_.get("per_wan_mbit") or {}
        wans = sorted(series)
        times = [t for t, _ in series[wans[0]]] if wans else []
        stacks = [[v for _, v in series[w]][:len(times)] for w in wans]
        if times:
            ax.stackplot(times, *stacks, labels=wans)
        ax.axvline(run_["cut_at_s"], color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{run_['kind']}: {run_['wan']} cut at {run_['cut_at_s']:.1f} s")
        ax.set_xlabel("seconds into the download")
        ax.set_ylabel("Mbit/s received")
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
