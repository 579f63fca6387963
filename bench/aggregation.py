"""Bonding efficiency, every run: what each scheduler makes of the links' summed goodput.

Run as root from the repository root::

    python3 -m bench.aggregation [--schedulers adaptive,consistent,roundrobin] [--runs 3]
        [--seconds 8] [--link-sets demo,symmetric] [--no-mptcp] [--no-failover] [--quick]

For each link set (the demo's ``30/10:20ms:0.1%,20:40ms,10:60ms:1%`` and the symmetric
``30:10ms:0.1%,20:20ms,10:30ms``), in one lab built for it:

1. **raw**: every link alone, each direction, 4 TCP flows bound to its address (iperf3),
   and its ICMP RTT; the sum per direction is what efficiency is a fraction of;
2. **bond**: for every scheduler (``--balance-<name>`` on both ends, ``--aes`` with a
   secret generated for this run in a root-only file), 1 and 8 TCP flows each way, each
   measurement ``--runs`` times, every time in a **fresh tunnel** (new server and client
   processes, so a run inherits nothing warm from the one before). Per measurement: the
   goodput, its efficiency (bond / raw sum of that direction), the ping RTT through the
   idle tunnel, the bytes each path sent (``tx_bytes`` of both ends' ``/status.json``);
   during the 8-flow download also the ping RTT under load and the server's per-path
   goodput sampled every 0.5 s (the PNG);
3. **mptcp**: the kernel's MPTCP over the same links (one ``subflow`` endpoint per WAN),
   one connection each way: the single-flow reference (``ratbond.lab.mptcp``);
4. **failover**: per scheduler, in a fresh tunnel, one TCP download (iperf3, 0.1 s
   intervals) and a 50 datagrams/s sequence-numbered UDP stream from 8 source ports in
   each direction (``ratbond.lab.seqstream``) while the link busiest with the download is
   blackholed in the emulator for 5 s, then another is set down (``ip link set down``)
   for 5 s: the download's dip (longest run of intervals under half its median) for each
   cut, and the datagrams lost and duplicated each way.

An unknown scheduler stops the bench before anything is measured (it is not skipped).
Prints progress per phase, then the figures table; writes ``bench/results/aggregation.json``
and ``aggregation.png`` (per-path goodput over time, when matplotlib is installed). The
lab, the tunnels, the pollers and the secret are removed on exit, error and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, iperf3, iperf3_server, mbit, ping_rtt, write_result
from ratbond.lab import mptcp
from ratbond.lab.bonded import (
    CLIENT_TUNNEL_IP,
    SERVER_STATUS_PORT,
    SERVER_TUNNEL_IP,
    BondedTunnel,
    by_link,
    wait_until,
)
from ratbond.lab.failover import (
    DIP_FRACTION,
    Sample,
    StatusPoller,
    Transfer,
    goodput_dip,
    median_goodput,
    parse_intervals,
)
from ratbond.lab.measure import MeasureError, free_port
from ratbond.lab.seqstream import SeqStream, Tally
from ratbond.lab.spec import LinkSpec, parse_links
from ratbond.lab.topology import Lab

LINK_SETS = {"demo": "30/10:20ms:0.1%,20:40ms,10:60ms:1%",
             "symmetric": "30:10ms:0.1%,20:20ms,10:30ms"}
DEFAULT_SCHEDULERS = "adaptive,consistent,roundrobin"
FLOW_COUNTS = (1, 8)
RAW_FLOWS = 4            # per link alone: enough flows that a lossy link shows its rate
LOAD_FLOWS = 8           # the download the loaded RTT and the per-path timeline come from
SAMPLE_PERIOD = 0.5      # seconds between status readings for the per-path timeline
IDLE_PINGS = 5
LOAD_PINGS = 10
# Failover timeline, seconds: warm-up, each cut held, settle after a path is back, tail.
FAILOVER_WARMUP = 3.0
FAILOVER_CUT = 5.0
FAILOVER_SETTLE = 1.5
FAILOVER_TAIL = 2.0
FAILOVER_BACK = 2.0      # what the timeline allows for a restored path to come back
BUSIEST_WINDOW = 0.5     # seconds of per-link bytes that pick the link to cut
STREAM_PPS = 50.0
STREAM_PORTS = 8
SETTLE_S = 1.0           # iperf3 intervals before this are slow start


def _log(text: str) -> None:
    print(text, flush=True)


@dataclass
class Settings:
    """What to run; ``secret_file`` is made by :func:`private_secret` for this run."""

    schedulers: list[str]
    runs: int
    seconds: int
    link_sets: list[str]
    mptcp: bool
    failover: bool
    log_dir: Path
    secret_file: Path = Path()
    _tunnels: int = field(default=0, repr=False)

    def tunnel_args(self, scheduler: str) -> list[str]:
        # The secret never appears on a command line: a root-only file made for this run.
        return ["--aes", f"--secret-file={self.secret_file}", f"--balance-{scheduler}"]

    def next_log_dir(self, label: str) -> Path:
        self._tunnels += 1
        return self.log_dir / f"{self._tunnels:03d}-{label}"


# ----- preflight ------------------------------------------------------------------------------


def check_schedulers(names: Sequence[str]) -> None:
    """Every scheduler must be a ``--balance-<name>`` flag of this ratbond: stop otherwise."""
    helps = [subprocess.run([sys.executable, "-m", "ratbond", role, "--help"],
                            capture_output=True, text=True, timeout=30, check=False).stdout
             for role in ("server", "client")]
    missing = [n for n in names if not all(f"--balance-{n}" in h for h in helps)]
    if missing:
        raise SystemExit("bench.aggregation: error: ratbond does not know "
                         + ", ".join(f"--balance-{n}" for n in missing)
                         + " (see 'ratbond server --help'); pick --schedulers from what it has")


@contextlib.contextmanager
def private_secret() -> Iterator[Path]:
    """A fresh secret in a file only root can read, removed with its directory at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="ratbond-aggregation-"))
    try:
        secret_file = workdir / "secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secrets.token_urlsafe(32))
        yield secret_file
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ----- per-path bookkeeping -------------------------------------------------------------------


def tx_by_link(status: dict[str, Any]) -> dict[int, int]:
    """Bytes sent so far per link (every path on it added up)."""
    return by_link(status, "tx_bytes")


def _delta(after: Mapping[int, int], before: Mapping[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def shares(moved: Mapping[int, int]) -> dict[str, float]:
    total = sum(moved.values())
    return {f"wan{k}": round(v / total, 3) if total else 0.0 for k, v in sorted(moved.items())}


def timeline(samples: Sequence[Sample]) -> dict[str, list[tuple[float, float]]]:
    """Per-link goodput (Mbit/s of ``tx_bytes``) between consecutive status readings."""
    series: dict[str, list[tuple[float, float]]] = {}
    if not samples:
        return series
    t0 = samples[0].t
    for prev, cur in itertools.pairwise(samples):
        dt = cur.t - prev.t
        if dt <= 0:
            continue
        before = _tx_of(prev)
        for link, sent in _tx_of(cur).items():
            rate = max(0, sent - before.get(link, 0)) * 8 / dt / 1e6
            series.setdefault(f"wan{link}", []).append((round(cur.t - t0, 2), round(rate, 2)))
    return series


def _tx_of(sample: Sample) -> dict[int, int]:
    return tx_by_link({"paths": [{"wan": p.wan, "remote": p.remote, "tx_bytes": p.tx_bytes}
                                 for p in sample.paths]})


# ----- phases ---------------------------------------------------------------------------------


def measure_raw(lab: Lab, seconds: int, tag: str) -> dict[str, Any]:
    """Each link alone: RTT and goodput each way; the sums efficiency divides by."""
    rows = []
    for i, spec in enumerate(lab.links, 1):
        source = lab.wan_address(i)
        rtt = ping_rtt(lab.client, lab.server_public_ip, count=10, source=source,
                       interval=0.1).get("median_ms")
        row: dict[str, Any] = {"link": i, "spec": spec.to_text(), "rtt_ms": rtt}
        for direction, reverse in (("up", False), ("down", True)):
            result = iperf3(lab.client, lab.server, lab.server_public_ip, seconds=seconds,
                            parallel=RAW_FLOWS, reverse=reverse, bind=source)
            row[f"{direction}_bps"] = result["bits_per_second"]
        _log(f"[{tag}] raw wan{i} {spec.to_text():<16} up {mbit(row['up_bps']):6.1f} "
             f"down {mbit(row['down_bps']):6.1f} Mbit/s  RTT {rtt or 0:.1f} ms")
        rows.append(row)
    rtts = [r["rtt_ms"] for r in rows if r["rtt_ms"] is not None]
    return {"links": rows, "flows": RAW_FLOWS,
            "sum_bps": {d: sum(r[f"{d}_bps"] for r in rows) for d in ("up", "down")},
            "best_rtt_ms": min(rtts, default=None), "slowest_rtt_ms": max(rtts, default=None)}


@contextlib.contextmanager
def fresh_tunnel(lab: Lab, settings: Settings, scheduler: str,
                 label: str) -> Iterator[BondedTunnel]:
    """New server and client processes with every path up; stopped (and their logs checked
    for escaped exceptions) when the block ends."""
    tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip,
                          server_args=settings.tunnel_args(scheduler),
                          client_args=settings.tunnel_args(scheduler),
                          log_dir=settings.next_log_dir(label))
    try:
        tunnel.start(paths=len(lab.links), timeout=30)
        yield tunnel
    finally:
        tunnel.stop()
        for error in tunnel.errors():
            _log(f"WARNING: an exception reached a ratbond event loop:\n{error[-1500:]}")


def measure_bond(lab: Lab, tunnel: BondedTunnel, raw: Mapping[str, Any], *, flows: int,
                 reverse: bool, seconds: int) -> dict[str, Any]:
    """One measurement in a fresh tunnel: idle RTT, goodput, path shares (+ load figures)."""
    direction = "down" if reverse else "up"
    idle = ping_rtt(lab.client, SERVER_TUNNEL_IP, count=IDLE_PINGS, interval=0.1)
    client_before, server_before = (tx_by_link(tunnel.client_status()),
                                    tx_by_link(tunnel.server_status()))
    loaded: dict[str, Any] = {}
    if reverse and flows == LOAD_FLOWS:
        result = _download_under_watch(lab, seconds, flows, loaded)
    else:
        result = iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=seconds,
                        parallel=flows, reverse=reverse)
    tunnel.check_alive()
    client_moved = _delta(tx_by_link(tunnel.client_status()), client_before)
    server_moved = _delta(tx_by_link(tunnel.server_status()), server_before)
    bps = float(result["bits_per_second"])
    capacity = raw["sum_bps"][direction]
    return {"direction": direction, "flows": flows, "bits_per_second": bps,
            "efficiency": round(bps / capacity, 3) if capacity else None,
            "retransmits": result.get("retransmits"),
            "idle_rtt_ms": idle.get("median_ms"), "idle_ping_loss": idle["loss"],
            "client_tx_bytes": client_moved, "server_tx_bytes": server_moved,
            "shares": shares(server_moved if reverse else client_moved), **loaded}


def _download_under_watch(lab: Lab, seconds: int, flows: int,
                          into: dict[str, Any]) -> dict[str, Any]:
    """An iperf3 download while a ping measures RTT under load and a poller samples the
    server's per-path bytes; the figures go into ``into``."""
    pinged: dict[str, Any] = {}

    def ping_later() -> None:
        time.sleep(min(2.0, seconds / 3))
        pinged.update(ping_rtt(lab.client, SERVER_TUNNEL_IP, count=LOAD_PINGS,
                               interval=min(0.2, seconds / 3 / LOAD_PINGS)))

    with StatusPoller(lab.server, SERVER_STATUS_PORT, period=SAMPLE_PERIOD) as poller:
        pinger = threading.Thread(target=ping_later, daemon=True)
        pinger.start()
        try:
            result = iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=seconds,
                            parallel=flows, reverse=True)
        finally:
            pinger.join(timeout=30)
        samples = poller.samples()
    into["loaded_rtt_ms"] = pinged.get("median_ms")
    into["loaded_ping_loss"] = pinged.get("loss")
    into["timeline_mbit"] = timeline(samples)
    return result


def measure_mptcp(lab: Lab, raw: Mapping[str, Any], seconds: int, tag: str) -> dict[str, Any]:
    """One kernel MPTCP connection each way over every link; efficiency as for the bond."""
    mptcp.enable(lab.client, lab.server,
                 {f"wan{i}": lab.wan_address(i) for i in range(1, len(lab.links) + 1)})
    rows = []
    for direction, reverse in (("up", False), ("down", True)):
        before = {i: lab.counters(i)[direction]["passed_bytes"]
                  for i in range(1, len(lab.links) + 1)}
        result = mptcp.measure(lab.client, lab.server, lab.server_public_ip,
                               free_port(lab.server), seconds=seconds, reverse=reverse,
                               bind=lab.wan_address(1))
        moved = {i: lab.counters(i)[direction]["passed_bytes"] - before[i] for i in before}
        capacity = raw["sum_bps"][direction]
        eff = result["bits_per_second"] / capacity if capacity else 0.0
        rows.append({"direction": direction, "flows": 1, **result,
                     "efficiency": round(eff, 3), "shares": shares(moved)})
        _log(f"[{tag}] mptcp {direction:<4} 1 connection {mbit(result['bits_per_second']):6.1f}"
             f" Mbit/s = {eff:.2f} of the raw sum, {result['subflows']} subflows, "
             f"link shares {shares(moved)}")
    return {"runs": rows}


def measure_failover(lab: Lab, tunnel: BondedTunnel, tag: str) -> dict[str, Any]:
    """A download and a UDP stream each way through a blackhole, then a link set down."""
    seconds = round(FAILOVER_WARMUP + FAILOVER_TAIL + 2 * (
        BUSIEST_WINDOW + FAILOVER_CUT + FAILOVER_BACK + FAILOVER_SETTLE))
    clock = time.monotonic
    streams = [SeqStream(lab.client, lab.server, SERVER_TUNNEL_IP, free_port(lab.server),
                         seconds, STREAM_PPS, STREAM_PORTS),
               SeqStream(lab.server, lab.client, CLIENT_TUNNEL_IP, free_port(lab.client),
                         seconds, STREAM_PPS, STREAM_PORTS)]
    cuts: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack, iperf3_server(lab.server) as port:
        for stream in streams:
            stack.enter_context(stream)
        transfer = Transfer.start(lab.client, SERVER_TUNNEL_IP, port, seconds, flows=1,
                                  reverse=True, clock=clock)
        stack.callback(transfer.stop)
        time.sleep(max(0.0, transfer.launched + FAILOVER_WARMUP - clock()))
        spared: set[int] = set()
        for kind in ("blackhole", "link-down"):
            link = _busiest_link(tunnel, exclude=spared)
            spared.add(link)
            cut_at = clock() - transfer.launched
            _cut(lab, kind, link, down=True)
            time.sleep(FAILOVER_CUT)
            restored_at = clock() - transfer.launched
            _cut(lab, kind, link, down=False)
            back = _wait_paths(tunnel, len(lab.links), timeout=10.0)
            cuts.append({"kind": kind, "link": link, "cut_at_s": round(cut_at, 2),
                         "restored_at_s": round(restored_at, 2), "back_after_s": back})
            _log(f"[{tag}] {kind} wan{link} at {cut_at:.1f} s for {FAILOVER_CUT:g} s, paths "
                 f"back {'never' if back is None else f'{back:.1f} s'} after the restore")
            time.sleep(FAILOVER_SETTLE)
        code, report = transfer.finish()
        tallies = [stream.finish(show=10**6) for stream in streams]
    if "error" in report:
        raise MeasureError(f"failover download (rc {code}): {report['error']}")
    intervals = parse_intervals(report)
    median = median_goodput(intervals, settle=SETTLE_S) or 0.0
    for k, cut in enumerate(cuts):
        end = cuts[k + 1]["cut_at_s"] if k + 1 < len(cuts) else float("inf")
        dip = goodput_dip(intervals, cut["cut_at_s"], end, median)
        cut.update(dip_s=dip.seconds, lowest_mbit=round(dip.lowest_mbit, 2))
    streams_out = {name: {**t.as_dict(), "first_lost": list(t.first_lost[:10]),
                          "lost_by_phase": lost_by_phase(t, stream, transfer.launched, cuts)}
                   for name, t, stream in zip(("udp_up", "udp_down"), tallies, streams,
                                              strict=True)}
    return {"seconds": seconds, "median_mbit": round(median / 1e6, 2), "cuts": cuts,
            "intervals": [(round(i.start, 2), round(i.bits_per_second / 1e6, 2))
                          for i in intervals], **streams_out}


def lost_by_phase(seen: Tally, stream: SeqStream, launched: float,
                  cuts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Lost datagrams by when they were sent: before the first cut, or after a cut (until
    the next one); times on the download's clock, like each cut's ``cut_at_s``."""
    names = ["before the cuts", *(f"after the {c['kind']}" for c in cuts)]
    out = dict.fromkeys(names, 0)
    for seq in seen.first_lost:
        sent_at = stream.started_at + seq / stream.pps - launched
        out[names[sum(1 for c in cuts if sent_at >= c["cut_at_s"])]] += 1
    return out


def _busiest_link(tunnel: BondedTunnel, exclude: set[int]) -> int:
    """The link the server sent most on over the last half second (not in ``exclude``)."""
    before = tx_by_link(tunnel.server_status())
    time.sleep(BUSIEST_WINDOW)
    moved = _delta(tx_by_link(tunnel.server_status()), before)
    candidates = {k: v for k, v in moved.items() if k not in exclude}
    if not candidates:
        raise MeasureError(f"no link left to cut (status shows {sorted(moved)})")
    return max(candidates, key=lambda k: candidates[k])


def _cut(lab: Lab, kind: str, link: int, *, down: bool) -> None:
    if kind == "blackhole":
        (lab.link(link).blackhole if down else lab.link(link).restore)()
    else:
        lab.set_wan_updown(link, not down)


def _wait_paths(tunnel: BondedTunnel, count: int, timeout: float) -> float | None:
    """Seconds until both ends show ``count`` paths up again; None if they did not."""
    def ready() -> bool:
        return (len(tunnel.paths_up(tunnel.client_status())) == count
                and len(tunnel.paths_up(tunnel.server_status())) == count)
    try:
        return round(wait_until(ready, timeout, interval=0.1, what="paths back"), 2)
    except TimeoutError:
        return None


# ----- one link set -----------------------------------------------------------------------------


def run_link_set(name: str, links: list[LinkSpec], settings: Settings) -> dict[str, Any]:
    tag = name
    started = time.monotonic()
    result: dict[str, Any] = {"links": ",".join(s.to_text() for s in links),
                              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with Lab.up(links) as lab:
        _log(f"[{tag}] lab {lab.name} up: {result['links']}")
        raw = measure_raw(lab, settings.seconds, tag)
        result["raw"] = raw
        _log(f"[{tag}] raw sum up {mbit(raw['sum_bps']['up']):.1f} down "
             f"{mbit(raw['sum_bps']['down']):.1f} Mbit/s")
        result["schedulers"] = {}
        for scheduler in settings.schedulers:
            runs: list[dict[str, Any]] = []
            for flows in FLOW_COUNTS:
                for reverse in (False, True):
                    for k in range(1, settings.runs + 1):
                        direction = "down" if reverse else "up"
                        with fresh_tunnel(lab, settings, scheduler,
                                          f"{name}-{scheduler}-{flows}{direction}-{k}") as t:
                            row = measure_bond(lab, t, raw, flows=flows, reverse=reverse,
                                               seconds=settings.seconds)
                        row["run"] = k
                        runs.append(row)
                        _log(f"[{tag}] {scheduler:<10} run {k}/{settings.runs} {flows} flow(s) "
                             f"{direction:<4} {mbit(row['bits_per_second']):6.1f} Mbit/s = "
                             f"{row['efficiency']:.2f}  idle RTT {_ms(row['idle_rtt_ms'])}"
                             + (f"  loaded RTT {_ms(row.get('loaded_rtt_ms'))}"
                                if "loaded_rtt_ms" in row else "")
                             + f"  shares {row['shares']}")
            entry: dict[str, Any] = {"runs": runs, "summary": summarize(runs)}
            if settings.failover:
                with fresh_tunnel(lab, settings, scheduler, f"{name}-{scheduler}-failover") as t:
                    entry["failover"] = measure_failover(lab, t, f"{tag}/{scheduler}")
                _log(f"[{tag}] {scheduler:<10} failover: {_failover_text(entry['failover'])}")
            result["schedulers"][scheduler] = entry
        if settings.mptcp:
            try:
                result["mptcp"] = measure_mptcp(lab, raw, settings.seconds, tag)
            except (mptcp.MptcpError, MeasureError) as exc:
                result["mptcp"] = {"error": str(exc)}
                _log(f"[{tag}] mptcp: ERROR {exc}")
    result["seconds_taken"] = round(time.monotonic() - started, 1)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median and worst efficiency per (flows, direction); RTT idle and under load."""
    out: dict[str, Any] = {}
    for flows in FLOW_COUNTS:
        for direction in ("up", "down"):
            effs = [r["efficiency"] for r in runs
                    if r["flows"] == flows and r["direction"] == direction
                    and r["efficiency"] is not None]
            if effs:
                out[f"{flows}_{direction}"] = {"median": round(statistics.median(effs), 3),
                                               "worst": min(effs), "runs": effs}
    idle = [r["idle_rtt_ms"] for r in runs if r.get("idle_rtt_ms") is not None]
    loaded = [r["loaded_rtt_ms"] for r in runs if r.get("loaded_rtt_ms") is not None]
    out["idle_rtt_ms"] = _spread(idle, worst=max)
    out["loaded_rtt_ms"] = _spread(loaded, worst=max)
    return out


def _spread(values: Sequence[float], worst: Callable[[Sequence[float]], float]
            ) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 1), "worst": round(worst(values), 1)}


# ----- report ---------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _eff(summary: Mapping[str, Any], key: str) -> str:
    cell = summary.get(key)
    return f"{cell['median']:.2f} / {cell['worst']:.2f}" if cell else "n/a"


def _rtt(cell: Mapping[str, float] | None) -> str:
    return "n/a" if not cell else f"{cell['median']:.1f} / {cell['worst']:.1f}"


def _failover_text(fo: Mapping[str, Any]) -> str:
    cuts = ", ".join(f"{c['kind']} wan{c['link']} dip {c['dip_s']:.1f} s" for c in fo["cuts"])
    udp = ", ".join(f"{d} lost {fo[f'udp_{d}']['lost']}{_phases(fo[f'udp_{d}'])} dup "
                    f"{fo[f'udp_{d}']['duplicates']} of {fo[f'udp_{d}']['sent']}"
                    for d in ("up", "down"))
    return f"{cuts}; UDP {udp}"


def _phases(stream: Mapping[str, Any]) -> str:
    """``(before the cuts a, after the blackhole b, ...)`` when any was lost, else nothing."""
    phases = stream.get("lost_by_phase")
    if not stream["lost"] or not phases:
        return ""
    return " (" + ", ".join(f"{k} {v}" for k, v in phases.items()) + ")"


def table(results: Mapping[str, Any]) -> list[str]:
    """The figures table: one block per link set."""
    lines: list[str] = []
    for name, res in results["link_sets"].items():
        raw = res["raw"]
        lines += ["", f"== {name}: {res['links']}  (load average before "
                      f"{res['load_average_before'][0]}, after {res['load_average_after'][0]})",
                  f"   raw sum ({raw['flows']} flows per link, alone): up "
                  f"{mbit(raw['sum_bps']['up']):.1f}, down {mbit(raw['sum_bps']['down']):.1f} "
                  f"Mbit/s; link RTT best {_ms(raw['best_rtt_ms'])}, slowest "
                  f"{_ms(raw['slowest_rtt_ms'])}",
                  f"   efficiency = bond / raw sum, median / worst of {results['runs']} fresh "
                  "tunnels; RTT ms median / worst",
                  f"   {'scheduler':<11}{'1 up':>13}{'1 down':>13}{'8 up':>13}{'8 down':>13}"
                  f"{'idle RTT':>15}{'8-down RTT':>15}"]
        for scheduler, entry in res["schedulers"].items():
            s = entry["summary"]
            lines.append(f"   {scheduler:<11}{_eff(s, '1_up'):>13}{_eff(s, '1_down'):>13}"
                         f"{_eff(s, '8_up'):>13}{_eff(s, '8_down'):>13}"
                         f"{_rtt(s['idle_rtt_ms']):>15}{_rtt(s['loaded_rtt_ms']):>15}")
        mp = res.get("mptcp")
        if mp and "runs" in mp:
            by = {r["direction"]: r for r in mp["runs"]}
            lines.append(f"   {'mptcp':<11}{by['up']['efficiency']:>13.2f}"
                         f"{by['down']['efficiency']:>13.2f}   (kernel MPTCP, one connection,"
                         f" {by['down']['subflows']} subflows)")
        elif mp:
            lines.append(f"   mptcp: {mp.get('error')}")
        lines.append("   bytes per link at the sender, 8 flows (median run): "
                     + "; ".join(f"{sch} up {_median_shares(e['runs'], 'up')} down "
                                 f"{_median_shares(e['runs'], 'down')}"
                                 for sch, e in res["schedulers"].items()))
        for scheduler, entry in res["schedulers"].items():
            if "failover" in entry:
                lines.append(f"   failover {scheduler:<11} {_failover_text(entry['failover'])}")
    return lines


def _median_shares(runs: Sequence[Mapping[str, Any]], direction: str) -> str:
    chosen = sorted((r for r in runs if r["flows"] == LOAD_FLOWS and r["direction"] == direction),
                    key=lambda r: r["bits_per_second"])
    if not chosen:
        return "n/a"
    middle = chosen[len(chosen) // 2]["shares"]
    return "/".join(f"{v:.0%}" for v in middle.values())


def plot(results: Mapping[str, Any]) -> Path | None:
    """Per-link goodput over the first 8-flow download of each scheduler and link set."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sets = list(results["link_sets"].items())
    schedulers = results["schedulers"]
    fig, axes = plt.subplots(len(sets), len(schedulers), squeeze=False, sharey="row",
                             figsize=(4.5 * len(schedulers), 3.2 * len(sets)))
    for row, (name, res) in enumerate(sets):
        for col, scheduler in enumerate(schedulers):
            ax = axes[row][col]
            runs = res["schedulers"].get(scheduler, {}).get("runs", [])
            watched = next((r for r in runs if r.get("timeline_mbit")), None)
            if watched:
                for link, points in sorted(watched["timeline_mbit"].items()):
                    ax.plot([t for t, _ in points], [v for _, v in points], label=link)
                ax.legend(fontsize=7)
            ax.set_title(f"{name}, {scheduler}, {LOAD_FLOWS} flows down", fontsize=9)
            ax.set_xlabel("s")
            ax.set_ylabel("Mbit/s sent by the server")
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / "aggregation.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----- entry point ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.aggregation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedulers", default=DEFAULT_SCHEDULERS,
                   help="comma-separated --balance-<name> values (default %(default)s)")
    p.add_argument("--runs", type=int, default=3, help="fresh tunnels per measurement")
    p.add_argument("--seconds", type=int, default=8, help="length of each measurement")
    p.add_argument("--link-sets", default=",".join(LINK_SETS),
                   help=f"which of {', '.join(LINK_SETS)} (default all), or link specs "
                        "joined by '+' for one more set")
    p.add_argument("--no-mptcp", dest="mptcp", action="store_false")
    p.add_argument("--no-failover", dest="failover", action="store_false")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 run, 3 s measurements")
    p.add_argument("--log-dir", type=Path,
                   default=Path("/tmp/ratbond-bench") / time.strftime("aggregation-%H%M%S"))
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.seconds = 1, 3
    if args.runs < 1 or args.seconds < 1:
        p.error("--runs and --seconds must be at least 1")
    return args


def _link_sets(text: str) -> dict[str, list[LinkSpec]]:
    out = {}
    for item in text.split(","):
        out[item] = parse_links(LINK_SETS[item] if item in LINK_SETS else item.replace("+", ","))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    check_schedulers(schedulers)
    sets = _link_sets(args.link_sets)
    settings = Settings(schedulers=schedulers, runs=args.runs, seconds=args.seconds,
                        link_sets=list(sets), mptcp=args.mptcp, failover=args.failover,
                        log_dir=args.log_dir)
    results: dict[str, Any] = {
        "bench": "aggregation", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python3 -m bench.aggregation", *(argv or sys.argv[1:])]),
        "schedulers": schedulers, "runs": args.runs, "seconds": args.seconds,
        "raw_flows": RAW_FLOWS, "dip_fraction": DIP_FRACTION, "link_sets": {}}
    _log(f"bench.aggregation: schedulers {', '.join(schedulers)}; {args.runs} run(s) of "
         f"{args.seconds} s; tunnel logs in {args.log_dir}")
    with private_secret() as secret_file:
        settings.secret_file = secret_file
        for name, links in sets.items():
            results["link_sets"][name] = run_link_set(name, links, settings)
            write_result("aggregation", results)  # what is done so far survives a later error
    for line in table(results):
        _log(line)
    _log(f"wrote {write_result('aggregation', results)}")
    png = plot(results)
    if png:
        _log(f"wrote {png}")
    return 0


def _main_interruptible() -> int:
    try:
        return main()
    except KeyboardInterrupt:  # the lab, tunnels and secret are gone by now (context exits)
        print("bench.aggregation: interrupted; everything it made was removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_main_interruptible())
