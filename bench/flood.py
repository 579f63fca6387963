"""A spoofed handshake flood against the server while a legitimate client connects and works.

Run as root from the repository root::

    python3 -m bench.flood [--runs 5] [--seconds 6] [--init-rate 10000] [--junk-rate 50000]
                           [--sources 10000] [--links 8:10ms,8:10ms] [--flooders 2]

In one lab (two emulated links, default 8 Mbit/s and 10 ms each, so the links and not the
CPU bound the goodput): the legitimate client's first initiation is captured on the ISP's
server-side interface.  Then, without a flood, the client is started ``--runs`` times (time
until both ends see both paths up) and the goodput through the tunnel is measured with
iperf3 (4 flows, ``--seconds`` each, 3 runs).  Then a flooder in the ISP namespace sends, from
``--sources`` spoofed addresses, ``--init-rate`` initiations/s (the captured one replayed and
forged ones with its key id) plus ``--junk-rate`` random datagrams/s, and the same
measurements are repeated under the flood, with the server's CPU%, RSS and log lines.  A
control run first sends the same flood to a closed port of the server's host: on a 2-core
machine the flooder itself takes a core, and the control tells that apart from what
ratbond's handling of the flood costs.

"Connect" is measured from the client process's start (Python start-up and the secret's
scrypt included: seconds on a loaded machine) and, from the client's log, the handshake part
alone (first WAN joined -- the first initiation -- until the session is established).

Targets (#15): connects within 3 s, goodput falls by less than 20 %, CPU and memory bounded.
Writes ``bench/results/flood.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import iperf3, mbit, write_result
from ratbond.lab.bonded import SERVER_PORT, SERVER_TUNNEL_IP, BondedTunnel
from ratbond.lab.netns import Namespace, stop_process
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab

SECRET = ["--aes", "--secret=ratbond flood bench"]
SPOOFED_NET = "100.64.0.0/10"  # the flooder's sources; replies to them are blackholed
CLOSED_PORT = 9  # nothing listens there: the control flood costs ratbond nothing
CLK_TCK = 100


def _log(text: str) -> None:
    print(text, flush=True)


def server_pid(tunnel: BondedTunnel) -> int:
    pids = tunnel.server_ns.pids()
    if not pids:
        raise RuntimeError("the server namespace has no process")
    return max(pids)  # ip netns exec replaces itself with python: one process


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Sampler:
    """Samples a process's RSS in a thread (peak and last), until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = self.first = rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return rss_kib(self.pid)


def capture_initiation(lab: Lab, tunnel: BondedTunnel) -> bytes:
    """Start the client while the ISP namespace records its first initiation."""
    tap = lab.isp.popen(sys.executable, "-m", "ratbond.lab.flooder", "capture", "--iface",
                        "isp0", "--port", str(SERVER_PORT), "--seconds", "15",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tap.stdout is not None
    if tap.stdout.readline().strip() != b"READY":
        stop_process(tap)
        raise RuntimeError("the capture did not start")
    tunnel.start_client()
    tunnel.wait_paths_up(2, timeout=30)
    out, _ = tap.communicate(timeout=20)
    initiation = bytes.fromhex(json.loads(out.decode().splitlines()[-1])["initiation"])
    if not initiation:
        raise RuntimeError("no initiation was captured")
    return initiation


def start_flooder(ns: Namespace, target: str, initiation: bytes, *, init_rate: float,
                  junk_rate: float, sources: int, seconds: float,
                  source: str | None = None, seed: int = 1, nice: int = 0
                  ) -> subprocess.Popen[bytes]:
    """A flooder in ``ns``; ``nice`` is added to its niceness (the attacker's CPU is not the
    server's in real life: on one machine it should not win the CPU from the server)."""
    argv = ["nice", "-n", str(nice)] if nice else []
    argv += [sys.executable, "-m", "ratbond.lab.flooder", "flood", "--target", target,
            "--initiation", initiation.hex(), "--init-rate", str(init_rate),
            "--junk-rate", str(junk_rate), "--sources", str(sources),
            "--seconds", str(seconds), "--seed", str(seed)]
    if source is not None:
        argv += ["--source", source]
    proc = ns.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"READY":
        stop_process(proc)
        raise RuntimeError("the flooder did not start")
    return proc


class Flood:
    """``count`` flooder processes sharing the rates (one Python process may not reach
    them), each from its own ``sources`` spoofed addresses."""

    def __init__(self, ns: Namespace, target: str, initiation: bytes, *, count: int,
                 init_rate: float, junk_rate: float, sources: int, seconds: float,
                 nice: int = 0) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for index in range(count):
                self.procs.append(start_flooder(
                    ns, target, initiation, init_rate=init_rate / count,
                    junk_rate=junk_rate / count, sources=sources, seconds=seconds,
                    seed=index + 1, nice=nice))
        except BaseException:
            for proc in self.procs:
                stop_process(proc)
            raise

    def stop(self) -> dict[str, Any]:
        """Stop every flooder; what they sent together."""
        results = [flooder_result(proc) for proc in self.procs]
        total: dict[str, Any] = {key: sum(r[key] for r in results)
                                 for key in ("initiations", "junk", "send_errors",
                                             "init_rate", "junk_rate", "sources")}
        total["seconds"] = max(r["seconds"] for r in results)
        total["processes"] = len(results)
        return total


def flooder_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Stop the flooder (SIGTERM: it prints what it sent) and parse its JSON line."""
    proc.terminate()
    out, err = proc.communicate(timeout=15)
    if proc.returncode != 0:
        raise RuntimeError(f"the flooder failed: {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _stamp(line: str) -> float:
    """Seconds of a log line's ``YYYY-MM-DD HH:MM:SS,mmm`` time stamp."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def connect_time(tunnel: BondedTunnel) -> tuple[float, float]:
    """Restart the client: seconds from its start until both ends see both paths up, and
    the handshake part of it from the client's log (first WAN joined -- the first
    initiation goes out -- until the session is established)."""
    tunnel.stop_client()
    path = tunnel.log_dir / f"{tunnel.client_ns.name}-client.log"
    offset = len(path.read_text(errors="replace").splitlines()) if path.exists() else 0
    started = time.monotonic()
    tunnel.start_client()
    tunnel.wait_paths_up(2, timeout=30)
    total = time.monotonic() - started
    lines = path.read_text(errors="replace").splitlines()[offset:]
    joined = next(_stamp(x) for x in lines if " INFO WAN " in x and " joined " in x)
    established = next(_stamp(x) for x in lines if " established with " in x)
    return total, established - joined


def udp_counters(ns: Namespace) -> dict[str, int]:
    """The namespace's kernel UDP counters (``/proc/net/snmp``): where datagrams were lost."""
    rows = [line.split() for line in ns.output("cat", "/proc/net/snmp").splitlines()
            if line.startswith("Udp:")]
    return {name: int(value) for name, value in zip(rows[0][1:], rows[1][1:], strict=True)}


def softnet_drops() -> int:
    """Packets the kernel dropped because a CPU's input backlog was full (all namespaces)."""
    return sum(int(line.split()[1], 16)
               for line in Path("/proc/net/softnet_stat").read_text().splitlines())


def log_lines(tunnel: BondedTunnel) -> list[str]:
    path = tunnel.log_dir / f"{tunnel.server_ns.name}-server.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def measure(lab: Lab, tunnel: BondedTunnel, *, runs: int, seconds: float) -> dict[str, Any]:
    both = [connect_time(tunnel) for _ in range(runs)]
    connects = [total for total, _ in both]
    handshakes = [handshake for _, handshake in both]
    goodputs = []
    for _ in range(3):
        result = iperf3(lab.client, lab.server, SERVER_TUNNEL_IP, seconds=seconds, parallel=4)
        tunnel.check_alive()
        goodputs.append(float(result["bits_per_second"]))
    return {"connect_s": connects, "connect_median_s": statistics.median(connects),
            "connect_worst_s": max(connects), "handshake_s": handshakes,
            "handshake_median_s": statistics.median(handshakes),
            "handshake_worst_s": max(handshakes), "goodput_bps": goodputs,
            "goodput_median_bps": statistics.median(goodputs),
            "goodput_worst_bps": min(goodputs)}


def run(*, runs: int, seconds: float, init_rate: float, junk_rate: float, sources: int,
        links: list[LinkSpec], flooders: int = 1, flooder_nice: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ratbond-flood-") as tmp, Lab.up(links) as lab:
        lab.isp.run("ip", "route", "add", "blackhole", SPOOFED_NET)
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, SECRET, SECRET,
                              log_dir=Path(tmp))
        with tunnel:
            tunnel.start_server()
            initiation = capture_initiation(lab, tunnel)
            _log(f"captured a {len(initiation)}-byte initiation")
            quiet = measure(lab, tunnel, runs=runs, seconds=seconds)
            _log(f"no flood: connect {quiet['connect_median_s']:.2f} s median, "
                 f"{quiet['connect_worst_s']:.2f} s worst; goodput "
                 f"{mbit(quiet['goodput_median_bps'])} Mbit/s median")
            pid = server_pid(tunnel)
            duration = runs * 8 + 3 * (seconds + 4) + 20
            # Control: the same flood at a closed port of the server's host -- the flooder's
            # own CPU and the kernel's work, none of ratbond's.
            control_flood = Flood(lab.isp, f"{lab.server_public_ip}:{CLOSED_PORT}",
                                  initiation, count=flooders, init_rate=init_rate,
                                  junk_rate=junk_rate, sources=sources,
                                  seconds=min(duration, 600), nice=flooder_nice)
            try:
                time.sleep(2.0)
                control = measure(lab, tunnel, runs=runs, seconds=seconds)
            finally:
                control_sent = control_flood.stop()
            _log(f"flood at a closed port: goodput {mbit(control['goodput_median_bps'])} "
                 "Mbit/s median")
            flood = Flood(lab.isp, f"{lab.server_public_ip}:{SERVER_PORT}", initiation,
                          count=flooders, init_rate=init_rate, junk_rate=junk_rate,
                          sources=sources, seconds=min(duration, 600), nice=flooder_nice)
            try:
                time.sleep(2.0)  # the flood is established before the client starts
                sampler = Sampler(pid)
                cpu_before, t_before = cpu_seconds(pid), time.monotonic()
                udp_before, backlog_before = udp_counters(lab.server), softnet_drops()
                load_before = os.getloadavg()[0]
                lines_before = len(log_lines(tunnel))
                flooded = measure(lab, tunnel, runs=runs, seconds=seconds)
                cpu_used, wall = cpu_seconds(pid) - cpu_before, time.monotonic() - t_before
                cpu = cpu_used / wall
                rss_last = sampler.stop()
                lines = log_lines(tunnel)[lines_before:]
                drops = tunnel.server_status().get("drops", {})
                udp_after, backlog_after = udp_counters(lab.server), softnet_drops()
                load_after = os.getloadavg()[0]
            finally:
                sent = flood.stop()
            tunnel.check_alive()
            errors = tunnel.errors()
    drop = 1 - flooded["goodput_median_bps"] / quiet["goodput_median_bps"]
    drop_vs_control = 1 - flooded["goodput_median_bps"] / control["goodput_median_bps"]
    return {
        "links": [spec.to_dict() for spec in links], "runs": runs, "seconds": seconds,
        "asked": {"init_rate": init_rate, "junk_rate": junk_rate, "sources": sources},
        "flooder": sent, "no_flood": quiet, "flood": flooded,
        "control_flood_at_closed_port": control, "control_flooder": control_sent,
        "goodput_drop": drop, "goodput_drop_vs_control": drop_vs_control,
        "server_cpu_percent": 100 * cpu, "flood_measured_seconds": wall,
        "server_cpu_seconds": cpu_used,
        "server_us_per_datagram": 1e6 * cpu_used / max(
            1, udp_after["InDatagrams"] - udp_before["InDatagrams"]),
        "server_rss_kib": {"before": sampler.first, "peak": sampler.peak, "after": rss_last},
        "server_log_lines_during_flood": len(lines), "server_log_sample": lines[:30],
        "server_drops": drops,
        "server_kernel_udp": {key: udp_after[key] - udp_before[key] for key in udp_after},
        "backlog_drops": backlog_after - backlog_before,
        "machine_load_avg_1min": [load_before, load_after],
        "tracebacks": len(errors),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--init-rate", type=float, default=10_000.0)
    parser.add_argument("--junk-rate", type=float, default=50_000.0)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--links", default="8:10ms,8:10ms")
    parser.add_argument("--flooders", type=int, default=2,
                        help="flooder processes sharing the rates (default 2)")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the whole lab (server, client, emulators, flooders, iperf3: "
                             "all inherit it) at this niceness, e.g. -5 on a machine shared "
                             "with unrelated load (default 0)")
    parser.add_argument("--flooder-nice", type=int, default=0,
                        help="added to the flooders' niceness, e.g. 10: on one machine the "
                             "attacker's CPU should not be taken from the server (default 0)")
    args = parser.parse_args(argv)
    if not 0 <= args.flooder_nice <= 19:
        parser.error(f"--flooder-nice {args.flooder_nice}: choose 0 to 19")
    if not -20 <= args.nice <= 19:
        parser.error(f"--nice {args.nice}: choose -20 to 19")
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
    if not 1 <= args.flooders <= 8:
        parser.error(f"--flooders {args.flooders}: choose 1 to 8")
    if not 1 <= args.runs <= 50:
        parser.error(f"--runs {args.runs}: choose 1 to 50")
    links = [LinkSpec.parse(text) for text in args.links.split(",")]
    if len(links) != 2:
        parser.error(f"--links {args.links!r}: give exactly two links")
    result = run(runs=args.runs, seconds=args.seconds, init_rate=args.init_rate,
                 junk_rate=args.junk_rate, sources=args.sources, links=links,
                 flooders=args.flooders, flooder_nice=args.flooder_nice)
    result["nice"] = args.nice
    result["flooder_nice"] = args.flooder_nice
    path = write_result("flood", result)
    flood, quiet = result["flood"], result["no_flood"]
    sent = result["flooder"]
    _log(f"{sent['processes']} flooders reached {sent['init_rate']} initiations/s + "
         f"{sent['junk_rate']} junk/s from {sent['sources']} sources "
         f"({sent['send_errors']} send errors)")
    _log(f"connect incl. start-up (s): no flood median {quiet['connect_median_s']:.2f} worst "
         f"{quiet['connect_worst_s']:.2f}; flood median {flood['connect_median_s']:.2f} worst "
         f"{flood['connect_worst_s']:.2f}")
    _log(f"handshake (s): no flood median {quiet['handshake_median_s']:.3f} worst "
         f"{quiet['handshake_worst_s']:.3f}; flood median {flood['handshake_median_s']:.3f} "
         f"worst {flood['handshake_worst_s']:.3f}")
    _log(f"goodput (Mbit/s): no flood median {mbit(quiet['goodput_median_bps'])} worst "
         f"{mbit(quiet['goodput_worst_bps'])}; flood median {mbit(flood['goodput_median_bps'])} "
         f"worst {mbit(flood['goodput_worst_bps'])}; drop {100 * result['goodput_drop']:.1f} %")
    control = result["control_flood_at_closed_port"]
    _log(f"same flood at a closed port (control): goodput median "
         f"{mbit(control['goodput_median_bps'])} worst {mbit(control['goodput_worst_bps'])}, "
         f"connect median {control['connect_median_s']:.2f}; ratbond's own share of the drop: "
         f"{100 * result['goodput_drop_vs_control']:.1f} %")
    rss = result["server_rss_kib"]
    _log(f"server under flood: CPU {result['server_cpu_percent']:.0f} %, RSS "
         f"{rss['before'] / 1024:.1f} -> peak {rss['peak'] / 1024:.1f} MiB, "
         f"{result['server_log_lines_during_flood']} log lines, drops {result['server_drops']}")
    kernel = result["server_kernel_udp"]
    _log(f"server CPU per received datagram: {result['server_us_per_datagram']:.1f} us "
         f"({result['server_cpu_seconds']:.1f} s CPU in {result['flood_measured_seconds']:.0f} s)")
    _log(f"server kernel during flood: {kernel.get('InDatagrams', 0)} UDP datagrams in, "
         f"{kernel.get('RcvbufErrors', 0)} dropped on a full socket buffer, "
         f"{result['backlog_drops']} input-backlog drops; load average "
         f"{result['machine_load_avg_1min'][0]:.1f} -> {result['machine_load_avg_1min'][1]:.1f}")
    _log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
