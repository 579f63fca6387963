"""Soak: hours of a router's life compressed: WAN events every 30 s under steady traffic.

Run as root from the repository root::

    python3 -m bench.soak [--minutes 60] [--event-every 30] [--sample-every 60]
                          [--links 30/10:20ms,20:40ms,10:60ms:1%] [--events all]

The demo's links in the lab; a ratbond server and client over them; for the whole run:
paced TCP transfers in both directions, one after the other, each hashed end to end; a
ping and a sequence-numbered UDP stream through the tunnel. Every ``--event-every``
seconds one event, in rotation: a link flap (interface down/up), a route flap, a 5 s
silent blackhole, an address change (a new "lease"), a 30 % loss burst for 10 s, a client
kill -9 and restart, a server restart and a rekey (the rekey interval is lowered through
``RATBOND_TEST_REKEY_AFTER``, so keys change every ``--rekey-after`` seconds all along).
After each event the tunnel must be back (every path up on both ends, a ping through it)
within the event's bound; after each kill -9 or stop nothing of the dead process may be
left (TUN, routes, rules, sockets). Every ``--sample-every`` seconds, between events, both
ends' RSS, open fds, threads and CPU time (from ``/proc``), path states and drop counters
(from ``/status.json``) are recorded.

Pass criteria (printed and in the JSON): no traceback in either log and no unexpected
exit; every transfer complete with matching SHA-256; per process lifetime, RSS growth
< 5 MB and no fd growth from the first sample after ``--warmup`` (default 600 s: the
status page fills its 10-minute history first; a shorter life is judged from its first
sample) to the last; every event
recovered within its bound; nothing stale after each kill -9 or stop. Writes
``bench/results/soak.json`` and ``soak.png`` (RSS, fds and goodput over time, when
matplotlib is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, write_result
from ratbond.lab.bonded import SERVER_TUNNEL_IP, BondedTunnel, TunnelError, wait_until
from ratbond.lab.netns import Namespace, stop_process
from ratbond.lab.seqstream import SeqStream
from ratbond.lab.spec import parse_links
from ratbond.lab.topology import Lab
from ratbond.runtime.common import REKEY_ENV

DEFAULT_LINKS = "30/10:20ms,20:40ms,10:60ms:1%"  # the demo's (ratbond.lab.demo)
EVENTS = ("link-flap", "route-flap", "blackhole", "lease", "loss-burst", "kill-client",
          "restart-server", "rekey")
LIVENESS = ("--hello-interval=0.5", "--dead-after=2")
TUN = "tun660"
XFER = str(Path(__file__).resolve().parent.parent / "tests" / "e2e" / "xfer.py")
RSS_GROWTH_LIMIT_KB = 5 * 1024
LEASE_ADDRESSES = ("10.201.3.2", "10.201.3.7")  # wan3 alternates between two leases
#: Seconds from the end of an event (the link restored, the process started) until every
#: path is up on both ends again and a ping crosses the tunnel.  Derived from README: a
#: path is dead after --dead-after (2 s) and comes back after one two-way exchange; a client
#: reconnects after 1.5 s of silence from a restarted server; a new client gets a session
#: at once.  The bounds add the lab's event handling and a 60 ms RTT link with 1 % loss.
BACK_WITHIN = {"link-flap": 5.0, "route-flap": 5.0, "blackhole": 6.0, "lease": 5.0,
               "loss-burst": 6.0, "kill-client": 8.0, "restart-server": 8.0, "rekey": 3.0}


# ----- what a process uses, from /proc -------------------------------------------------------


def proc_usage(pid: int) -> dict[str, float]:
    """RSS (kB), open fds, threads and CPU seconds of one process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_kb": int(fields["VmRSS"].split()[0]),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"]),
            "cpu_s": round((int(stat[11]) + int(stat[12])) / ticks, 2)}


def leftovers(ns: Namespace) -> list[str]:
    """What a dead ratbond could have left in ``ns``: its TUN, routes or rules naming it,
    UDP sockets on the tunnel port or a WAN address."""
    found = [f"link: {line}" for line in ns.output("ip", "-o", "link", "show").splitlines()
             if f"{TUN}:" in line or f"{TUN}@" in line]
    found += [f"route: {line}" for line in
              ns.output("ip", "route", "show", "table", "all").splitlines() if TUN in line]
    found += [f"route6: {line}" for line in
              ns.output("ip", "-6", "route", "show", "table", "all").splitlines() if TUN in line]
    found += [f"rule: {line}" for line in ns.output("ip", "rule").splitlines() if TUN in line]
    for line in ns.output("ss", "-uanH").splitlines():
        local = line.split()[3] if len(line.split()) > 3 else ""
        if local.endswith(":12345") or local.startswith("10.201."):
            found.append(f"socket: {line}")
    return found


# ----- steady traffic ---------------------------------------------------------------------------


@dataclass
class TransferLoop:
    """Hashed TCP transfers through the tunnel, one after the other, until stopped."""

    tunnel: BondedTunnel
    direction: str          # "up": client -> server, "down": server -> client
    port: int
    size: int
    rate: float             # bytes/s
    results: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"xfer-{self.direction}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        round_no = 0
        while not self._stop.is_set():
            round_no += 1
            self.results.append(self._one(f"soak-{self.direction}-{round_no}"))

    def _one(self, seed: str) -> dict[str, Any]:
        started = time.monotonic()
        tun = self.tunnel
        limit = self.size / self.rate + 120
        mode_listen, mode_connect = (("tcp-recv", "tcp-send") if self.direction == "up"
                                     else ("tcp-serve", "tcp-fetch"))
        extra = [] if self.direction == "up" else [str(self.size), seed, str(self.rate)]
        listener = tun.server_ns.popen(sys.executable, XFER, mode_listen, SERVER_TUNNEL_IP,
                                       str(self.port), *extra, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        connect_extra = [str(self.size), seed, str(self.rate)] if self.direction == "up" else []
        peer: subprocess.Popen[bytes] | None = None
        try:
            assert listener.stdout is not None
            if listener.stdout.readline().strip() != b"READY":
                raise RuntimeError("listener did not start")
            peer = tun.client_ns.popen(sys.executable, XFER, mode_connect, SERVER_TUNNEL_IP,
                                       str(self.port), *connect_extra, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            a = _result(peer, limit)
            b = _result(listener, limit)
            sent, got = (a, b) if self.direction == "up" else (b, a)
            ok = sent["sha256"] == got["sha256"] and sent["bytes"] == got["bytes"] == self.size
            return {"seed": seed, "ok": ok, "bytes": got["bytes"], "started_s": started,
                    "seconds": round(time.monotonic() - started, 2)}
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
            return {"seed": seed, "ok": False, "error": str(exc)[-300:], "started_s": started,
                    "seconds": round(time.monotonic() - started, 2)}
        finally:
            for proc in (peer, listener):
                if proc is not None:
                    stop_process(proc)


def _result(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"xfer exited {proc.returncode}: {err.decode(errors='replace')}")
    data: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return data


class TunCounter:
    """Goodput over time from the client TUN's byte counters (cheap: one ``ip`` call)."""

    def __init__(self, ns: Namespace, every: float) -> None:
        self.ns = ns
        self.every = every
        self.points: list[tuple[float, float, float]] = []  # (t, rx Mbit/s, tx Mbit/s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tun-counter", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _read(self) -> tuple[int, int] | None:
        proc = self.ns.run("ip", "-j", "-s", "link", "show", TUN, check=False, timeout=5)
        if proc.returncode != 0:
            return None
        s64 = json.loads(proc.stdout)[0]["stats64"]
        return int(s64["rx"]["bytes"]), int(s64["tx"]["bytes"])

    def _run(self) -> None:
        last: tuple[float, int, int] | None = None
        while not self._stop.wait(self.every):
            now = time.monotonic()
            try:
                reading = self._read()
            except (OSError, ValueError, KeyError, subprocess.SubprocessError):
                reading = None
            if reading is None:           # the client is restarting: no TUN, no goodput
                self.points.append((round(now - self.t0, 1), 0.0, 0.0))
                last = None
                continue
            if last is not None and reading[0] >= last[1]:
                dt = now - last[0]
                self.points.append((round(now - self.t0, 1),
                                    round((reading[0] - last[1]) * 8 / dt / 1e6, 3),
                                    round((reading[1] - last[2]) * 8 / dt / 1e6, 3)))
            last = (now, *reading)


# ----- the soak ------------------------------------------------------------------------------


@dataclass
class SoakConfig:
    minutes: float = 60.0
    event_every: float = 30.0
    sample_every: float = 60.0
    warmup: float = 600.0            # the status history's horizon (see resource_growth)
    links: str = DEFAULT_LINKS
    events: tuple[str, ...] = EVENTS
    rekey_after: float = 20.0
    rate: float = 400_000.0          # bytes/s of each direction's transfers
    transfer_seconds: float = 20.0   # each transfer's length at that rate
    log_dir: Path | None = None


class Soak:
    """One soak run; :meth:`run` returns the JSON-ready result with its verdict."""

    def __init__(self, lab: Lab, config: SoakConfig, log_dir: Path) -> None:
        self.lab = lab
        self.config = config
        self.tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, LIVENESS,
                                   LIVENESS, log_dir=log_dir)
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.stale: list[dict[str, Any]] = []
        self.births = {"server": 0.0, "client": 0.0}
        self.incarnation = {"server": 1, "client": 1}
        self.lease = 0
        self.missing = ""  # what the last tunnel_back() found missing

    # ----- helpers -----

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def tunnel_back(self) -> bool:
        """Every path up on both ends (wan3 on its current lease) and a ping through; what
        was missing last is kept in ``self.missing`` for the record."""
        tun = self.tunnel
        tun.check_alive()
        want = len(self.lab.links)
        client = tun.client_status()
        server = tun.server_status()
        up_c, up_s = tun.paths_up(client), tun.paths_up(server)
        if len(up_c) != want or len(up_s) != want:
            self.missing = f"paths up: client {up_c}, server {up_s}"
            return False
        lease = LEASE_ADDRESSES[self.lease]
        if not any(p.get("wan") == "wan3" and p.get("local") == lease and p["state"] == "up"
                   for p in client["paths"]):
            self.missing = f"wan3 not up on {lease}"
            return False
        ping = tun.client_ns.run("ping", "-c", "1", "-W", "1", SERVER_TUNNEL_IP, check=False)
        if ping.returncode != 0:
            self.missing = "ping through the tunnel: " + ", ".join(
                f"path {p['path_id']} waitsnd {p.get('waitsnd')} rtt {p.get('rtt_ms')}"
                for p in client["paths"])
            return False
        return True

    def wait_back(self, name: str) -> float:
        return wait_until(self.tunnel_back, BACK_WITHIN[name] + 20, interval=0.2,
                          what=f"tunnel back after {name}")

    def check_left(self, role: str) -> None:
        ns = self.tunnel.server_ns if role == "server" else self.tunnel.client_ns
        left = wait_until_empty(lambda: leftovers(ns), 3.0)
        self.stale.append({"t": self.now(), "role": role, "left": left})

    # ----- events -----

    def event(self, name: str) -> dict[str, Any]:
        """Run one event; the dict says when it ended and how long the tunnel took back."""
        record: dict[str, Any] = {"event": name, "t": self.now()}
        handler: Callable[[dict[str, Any]], None] = getattr(self, "_" + name.replace("-", "_"))
        handler(record)
        record["ended_t"] = self.now()
        self.missing = ""
        try:
            record["back_s"] = round(self.wait_back(name), 2)
        except TimeoutError as exc:
            record["back_s"] = None
            record["error"] = str(exc)
        record["within"] = BACK_WITHIN[name]
        record["ok"] = record["back_s"] is not None and record["back_s"] <= BACK_WITHIN[name]
        if not record["ok"]:
            record["missing_last"] = self.missing
        return record

    def _link_flap(self, _record: dict[str, Any]) -> None:
        self.lab.set_wan_updown(1, up=False)
        time.sleep(2)
        self.lab.set_wan_updown(1, up=True)

    def _route_flap(self, _record: dict[str, Any]) -> None:
        self.lab.client.run("ip", "route", "del", "default", "table", "102")
        time.sleep(2)
        readd_route(self.lab.client, 2, "10.201.2.2")

    def _blackhole(self, _record: dict[str, Any]) -> None:
        self.lab.link(2).blackhole()
        time.sleep(5)
        self.lab.link(2).restore()

    def _lease(self, record: dict[str, Any]) -> None:
        old, new = LEASE_ADDRESSES[self.lease], LEASE_ADDRESSES[1 - self.lease]
        record["from"], record["to"] = old, new
        c = self.lab.client
        c.run("sysctl", "-qw", "net.ipv4.conf.wan3.promote_secondaries=1")
        c.run("ip", "addr", "add", f"{new}/24", "dev", "wan3", "noprefixroute")
        c.run("ip", "rule", "add", "pref", "10000", "from", new, "lookup", "103")
        readd_route(c, 3, new)
        c.run("ip", "addr", "del", f"{old}/24", "dev", "wan3")
        readd_route(c, 3, new)
        c.run("ip", "rule", "del", "pref", "10000", "from", old, "lookup", "103")
        self.lease = 1 - self.lease

    def _loss_burst(self, _record: dict[str, Any]) -> None:
        self.lab.link(1).set(loss=0.3)
        time.sleep(10)
        self.lab.link(1).restore()

    def _kill_client(self, record: dict[str, Any]) -> None:
        proc = self.tunnel.client
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        record["exit"] = proc.wait(10)
        self.check_left("client")
        self.tunnel.start_client()
        self.births["client"] = time.monotonic()
        self.incarnation["client"] += 1

    def _restart_server(self, record: dict[str, Any]) -> None:
        record["exit"] = self.tunnel.stop_server()
        self.check_left("server")
        self.tunnel.start_server()
        self.births["server"] = time.monotonic()
        self.incarnation["server"] += 1

    def _rekey(self, record: dict[str, Any]) -> None:
        before = int(self.tunnel.client_status()["channel"].get("rekeys") or 0)
        started = time.monotonic()

        def rekeyed() -> bool:
            return int(self.tunnel.client_status()["channel"].get("rekeys") or 0) > before
        wait_until(rekeyed, self.config.rekey_after + 15, interval=0.25, what="a rekey")
        record["rekeys_before"] = before
        record["waited_s"] = round(time.monotonic() - started, 2)

    # ----- samples -----

    def sample(self) -> None:
        tun = self.tunnel
        row: dict[str, Any] = {"t": self.now()}
        for role, proc, status in (("server", tun.server, tun.server_status),
                                   ("client", tun.client, tun.client_status)):
            if proc is None:
                continue
            snap = status()
            row[role] = {**proc_usage(proc.pid), "incarnation": self.incarnation[role],
                         "age_s": round(time.monotonic() - self.births[role], 1),
                         "paths": {str(p["path_id"]): p["state"] for p in snap["paths"]},
                         "drops": {k: v for k, v in snap.get("drops", {}).items() if v},
                         "rekeys": snap["channel"].get("rekeys")}
        self.samples.append(row)

    # ----- the run -----

    def run(self) -> dict[str, Any]:
        cfg = self.config
        duration = cfg.minutes * 60
        os.environ[REKEY_ENV] = f"{cfg.rekey_after:g}"  # restarted ends inherit it too
        try:
            return self._run(duration)
        finally:
            os.environ.pop(REKEY_ENV, None)

    def _run(self, duration: float) -> dict[str, Any]:
        cfg = self.config
        tun = self.tunnel
        tun.start(paths=len(self.lab.links), timeout=30)
        self.t0 = time.monotonic()
        self.births = {"server": self.t0, "client": self.t0}
        size = int(cfg.rate * cfg.transfer_seconds)
        loops = [TransferLoop(tun, "up", 5101, size, cfg.rate),
                 TransferLoop(tun, "down", 5201, size, cfg.rate)]
        counter = TunCounter(tun.client_ns, 2.0)
        stream = SeqStream(tun.client_ns, tun.server_ns, SERVER_TUNNEL_IP, 6001,
                           seconds=duration, pps=50, ports=4)
        # ping may end while the client's TUN is gone (kill -9): start it again until the end;
        # -q: only the summary, or a full pipe would stop it after ~1,100 lines.
        again = (f'end=$(( $(date +%s) + {int(duration)} )); '
                 f'while [ $(date +%s) -lt $end ]; do '
                 f'ping -q -i 0.2 -W 1 -w $(( end - $(date +%s) )) {SERVER_TUNNEL_IP}; '
                 f'sleep 0.2; done')
        ping = tun.client_ns.popen("sh", "-c", again, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
        tally: dict[str, Any] | None = None
        try:
            for loop in loops:
                loop.start()
            counter.start()
            stream.start()
            next_sample = cfg.sample_every / 2
            k = 0
            while True:
                slot = (k + 1) * cfg.event_every
                if slot > duration:
                    break
                while self.now() < slot:
                    if self.now() >= next_sample:
                        self.sample()
                        next_sample += cfg.sample_every
                    time.sleep(min(0.5, max(0.0, slot - self.now())))
                name = cfg.events[k % len(cfg.events)]
                record = self.event(name)
                print(f"[{record['t']:7.1f} s] {name:<15} back in "
                      f"{record['back_s'] if record['back_s'] is not None else 'NEVER'} s"
                      f" (bound {record['within']:g} s)"
                      + (f"; last missing: {record['missing_last']}" if not record["ok"]
                         else ""), flush=True)
                self.events.append(record)
                k += 1
            while self.now() < duration:
                time.sleep(0.5)
            self.sample()
        finally:
            for loop in loops:
                loop.stop(timeout=cfg.transfer_seconds + 130)
            counter.stop()
            with contextlib.suppress(Exception):  # a failed stream shows as a missing tally
                tally = stream.finish().as_dict()
            stream.stop()
            ping_out = _finish_ping(ping, 15)
            errors = tun.errors()
            alive_error = None
            try:
                tun.check_alive()
            except TunnelError as exc:
                alive_error = str(exc)[:2000]
            log_lines = {p.name: len(p.read_text(errors="replace").splitlines())
                         for p in sorted(tun.log_dir.glob("*.log"))}
            tun.stop()
            self.check_left("client")
            self.check_left("server")
        transfers = {loop.direction: loop.results for loop in loops}
        return self.verdict(transfers, goodput=counter.points, tally=tally, ping=ping_out,
                            errors=errors, alive_error=alive_error, log_lines=log_lines)

    def verdict(self, transfers: dict[str, list[dict[str, Any]]], *,
                goodput: list[tuple[float, float, float]], tally: dict[str, Any] | None,
                ping: dict[str, Any], errors: list[str], alive_error: str | None,
                log_lines: dict[str, int]) -> dict[str, Any]:
        growth = resource_growth(self.samples, self.config.warmup)
        finished = transfers
        checks = {
            "no_traceback": not errors,
            "no_unexpected_exit": alive_error is None,
            "transfers_intact": all(r["ok"] for rs in finished.values() for r in rs)
            and all(any(r["ok"] for r in rs) for rs in finished.values()),
            "rss_flat": all(g["rss_growth_kb"] < RSS_GROWTH_LIMIT_KB for g in growth
                            if g["judged"]),
            "fds_flat": all(g["fd_growth"] <= 0 for g in growth if g["judged"]),
            "recovered_in_time": all(e["ok"] for e in self.events),
            "nothing_stale": all(not s["left"] for s in self.stale),
        }
        for name, ok in checks.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {name}")
        backs: dict[str, list[float]] = {}
        for e in self.events:
            if e["back_s"] is not None:
                backs.setdefault(e["event"], []).append(e["back_s"])
        return {
            "bench": "soak", "config": {**{k: v for k, v in vars(self.config).items()
                                           if k != "log_dir"},
                                        "events": list(self.config.events)},
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count()},
            "passed": all(checks.values()), "checks": checks,
            "events": self.events,
            "back_s": {name: {"median": sorted(v)[len(v) // 2], "worst": max(v), "n": len(v)}
                       for name, v in backs.items()},
            "samples": self.samples, "growth": growth, "stale": self.stale,
            "transfers": {d: {"count": len(rs), "intact": sum(r["ok"] for r in rs),
                              "bytes": sum(int(r.get("bytes") or 0) for r in rs if r["ok"]),
                              "failed": [r for r in rs if not r["ok"]]}
                          for d, rs in finished.items()},
            "seqstream": tally, "ping": ping, "goodput_mbit": goodput,
            "tracebacks": errors, "unexpected_exit": alive_error, "log_lines": log_lines,
        }


def wait_until_empty(probe: Callable[[], list[str]], timeout: float) -> list[str]:
    """``probe()`` until it finds nothing (the kernel removes a dead TUN shortly after the
    last fd closes); what it still finds after ``timeout``."""
    deadline = time.monotonic() + timeout
    found = probe()
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = probe()
    return found


def readd_route(ns: Namespace, i: int, src: str) -> None:
    """Table 100+i as a router's DHCP client puts it back: subnet route, then default."""
    table = str(100 + i)
    ns.run("ip", "route", "replace", f"10.201.{i}.0/24", "dev", f"wan{i}", "src", src,
           "table", table)
    ns.run("ip", "route", "replace", "default", "via", f"10.201.{i}.1", "dev", f"wan{i}",
           "src", src, "table", table)


def resource_growth(samples: list[dict[str, Any]], warmup: float) -> list[dict[str, Any]]:
    """Per role and process lifetime: RSS and fd change from the first sample taken at
    least ``warmup`` seconds after it started (or, for a shorter life, its first sample)
    to its last sample.  The status page keeps 600 s of once-a-second history, so RSS
    rises for the first ten minutes of a life by design: the default warm-up."""
    out = []
    for role in ("server", "client"):
        lives: dict[int, list[dict[str, Any]]] = {}
        for s in samples:
            if role in s:
                lives.setdefault(s[role]["incarnation"], []).append(s[role] | {"t": s["t"]})
        for life, rows in sorted(lives.items()):
            warm = [r for r in rows if r["age_s"] >= warmup]
            # A life too short to pass the warm-up is judged over all of it (stricter).
            judged = len(rows) >= 2
            basis = "after warm-up" if len(warm) >= 2 else "whole life"
            first, last = (warm[0], warm[-1]) if len(warm) >= 2 else (rows[0], rows[-1])
            out.append({"role": role, "incarnation": life, "judged": judged, "basis": basis,
                        "samples": len(rows), "from_t": first["t"], "to_t": last["t"],
                        "rss_kb": [first["rss_kb"], last["rss_kb"]],
                        "rss_growth_kb": last["rss_kb"] - first["rss_kb"],
                        "fds": [first["fds"], last["fds"]],
                        "fd_growth": last["fds"] - first["fds"],
                        "threads": [first["threads"], last["threads"]],
                        "cpu_s": [first["cpu_s"], last["cpu_s"]]})
    return out


def _finish_ping(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        out = b""
    runs = re.findall(rb"(\d+) packets transmitted, (\d+) received", out or b"")
    if not runs:
        return {"sent": None, "received": None}
    sent, got = sum(int(a) for a, _ in runs), sum(int(b) for _, b in runs)
    return {"sent": sent, "received": got, "runs": len(runs),
            "loss": round(1 - got / sent, 4) if sent else None}


@contextlib.contextmanager
def soak_lab(links: str) -> Iterator[Lab]:
    with Lab.up(parse_links(links)) as lab:
        yield lab


def run(config: SoakConfig) -> dict[str, Any]:
    """Build the lab, soak, tear everything down; the result dict."""
    with contextlib.ExitStack() as stack:
        log_dir = config.log_dir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="ratbond-soak-")))
        lab = stack.enter_context(soak_lab(config.links))
        soak = Soak(lab, config, log_dir)
        try:
            return soak.run()
        finally:
            soak.tunnel.stop()


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """RSS and fds of both ends and goodput over time; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax_rss, ax_fd, ax_put) = plt.subplots(3, 1, sharex=True, figsize=(10, 8))
    for role in ("server", "client"):
        rows = [(s["t"], s[role]) for s in result["samples"] if role in s]
        ax_rss.plot([t for t, _ in rows], [r["rss_kb"] / 1024 for _, r in rows], ".-",
                    label=role)
        ax_fd.plot([t for t, _ in rows], [r["fds"] for _, r in rows], ".-", label=role)
    points = result["goodput_mbit"]
    ax_put.plot([p[0] for p in points], [p[1] for p in points], label="client TUN rx (down)")
    ax_put.plot([p[0] for p in points], [p[2] for p in points], label="client TUN tx (up)")
    for e in result["events"]:
        for ax in (ax_rss, ax_fd, ax_put):
            ax.axvline(e["t"], color="grey", alpha=0.25, lw=0.8)
        ax_put.text(e["t"], ax_put.get_ylim()[1] * 0.9, e["event"], rotation=90, fontsize=6,
                    va="top")
    ax_rss.set_ylabel("RSS MiB")
    ax_fd.set_ylabel("open fds")
    ax_put.set_ylabel("Mbit/s")
    ax_put.set_xlabel("s since start (grey: events)")
    ax_rss.legend(fontsize=8)
    ax_fd.legend(fontsize=8)
    ax_put.legend(fontsize=8)
    ax_rss.set_title(f"ratbond soak, {result['config']['minutes']:g} min")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--event-every", type=float, default=30.0, help="seconds between events")
    p.add_argument("--sample-every", type=float, default=60.0,
                   help="seconds between resource samples")
    p.add_argument("--warmup", type=float, default=600.0,
                   help="seconds of a process's life before its growth is judged (default: "
                        "the status page's 600 s history horizon)")
    p.add_argument("--links", default=DEFAULT_LINKS)
    p.add_argument("--events", default="all",
                   help=f"comma-separated subset of {','.join(EVENTS)} (default all)")
    p.add_argument("--rekey-after", type=float, default=20.0,
                   help=f"seconds between rekeys ({REKEY_ENV}; default %(default)s)")
    p.add_argument("--rate", type=float, default=400_000.0,
                   help="bytes/s of each direction's transfers")
    p.add_argument("--name", default="soak", help="result file name in bench/results/")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="keep both ends' logs here (default: a temporary directory)")
    args = p.parse_args(argv)
    if args.events == "all":
        args.events = EVENTS
    else:
        args.events = tuple(e.strip() for e in args.events.split(",") if e.strip())
        bad = [e for e in args.events if e not in EVENTS]
        if bad or not args.events:
            p.error(f"--events {','.join(bad) or '(empty)'}: pick from {','.join(EVENTS)}")
    for flag in ("minutes", "event_every", "sample_every", "rate"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')}={getattr(args, flag)}: must be > 0")
    if not 1 <= args.rekey_after <= 120:
        p.error(f"--rekey-after={args.rekey_after}: need 1..120 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.soak needs root (network namespaces)", file=sys.stderr)
        return 2
    config = SoakConfig(minutes=args.minutes, event_every=args.event_every,
                        sample_every=args.sample_every, warmup=args.warmup, links=args.links,
                        events=args.events, rekey_after=args.rekey_after, rate=args.rate,
                        log_dir=args.log_dir)
    result = run(config)
    print(f"wrote {write_result(args.name, result)}")
    png = plot(result, RESULTS_DIR / f"{args.name}.png")
    if png:
        print(f"wrote {png}")
    print("PASSED" if result["passed"] else "FAILED")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
