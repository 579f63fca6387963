"""Measurements between lab namespaces: iperf3 goodput and ICMP RTT, as numbers.

Used by ``ratbond demo``, the end-to-end tests and the benchmarks (``bench/common.py``
re-exports these), so every figure in the project is taken the same way.
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from ratbond.lab.netns import Namespace, stop_process


class MeasureError(RuntimeError):
    """A measurement could not be taken (tool failed, server never came up)."""


def _port_listening(ns: Namespace, port: int, udp: bool = False) -> bool:
    proto = "-lun" if udp else "-ltn"
    out = ns.run("ss", "-H", proto, f"sport = :{port}", check=False).stdout
    return bool(out.strip())


def free_port(ns: Namespace) -> int:
    """A TCP port nothing listens on inside ``ns``, below the ephemeral range (32768+) so
    short-lived client connections (status pollers) cannot be holding it."""
    for _ in range(50):
        port = random.randint(20000, 32767)
        if not _port_listening(ns, port):
            return port
    raise MeasureError(f"no free port found in {ns.name}")


@contextlib.contextmanager
def iperf3_server(ns: Namespace, *, port: int | None = None,
                  bind: str | None = None) -> Iterator[int]:
    """An ``iperf3 -s`` inside ``ns`` until the block ends; yields its port once listening."""
    port = port or free_port(ns)
    argv = ["iperf3", "-s", "-p", str(port)]
    if bind:
        argv += ["-B", bind]
    proc = ns.popen(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5.0
        while not _port_listening(ns, port):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise MeasureError(f"iperf3 server in {ns.name} exited: {err.strip()}")
            if time.monotonic() > deadline:
                raise MeasureError(f"iperf3 server in {ns.name} not listening on {port}")
            time.sleep(0.02)
        yield port
    finally:
        stop_process(proc)


def iperf3_client(ns: Namespace, server_ip: str, port: int, *, seconds: float,
                  parallel: int = 1, reverse: bool = False, bind: str | None = None,
                  udp: bool = False, bitrate: str | None = None) -> dict[str, Any]:
    """Run one iperf3 test from ``ns``; goodput is what the receiving side counted.

    iperf3 reads a fractional ``-t`` as 0, which means "forever": whole seconds only.
    """
    argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(max(1, round(seconds))), "-P",
            str(parallel), "--json", "--connect-timeout", "5000"]
    if reverse:
        argv.append("-R")
    if bind:
        argv += ["-B", bind]
    if udp:
        argv += ["-u", "-b", bitrate or "10M"]
    elif bitrate:
        argv += ["-b", bitrate]
    proc = ns.run(*argv, check=False, timeout=seconds + 30)
    try:
        raw = json.loads(proc.stdout)
    except ValueError:
        raise MeasureError(f"iperf3 in {ns.name} gave no JSON (rc {proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()}") from None
    if "error" in raw:
        raise MeasureError(f"iperf3 in {ns.name}: {raw['error']}")
    end = raw["end"]
    if udp:
        total = end["sum"]
        return {"bits_per_second": float(total["bits_per_second"]),
                "lost_percent": float(total.get("lost_percent", 0.0)),
                "jitter_ms": float(total.get("jitter_ms", 0.0)), "raw": raw}
    return {"bits_per_second": float(end["sum_received"]["bits_per_second"]),
            "sent_bits_per_second": float(end["sum_sent"]["bits_per_second"]),
            "retransmits": int(end["sum_sent"].get("retransmits", 0)), "raw": raw}


def iperf3(client_ns: Namespace, server_ns: Namespace, server_ip: str, *, seconds: float,
           parallel: int = 1, reverse: bool = False, bind: str | None = None,
           udp: bool = False, bitrate: str | None = None) -> dict[str, Any]:
    """Start ``iperf3 -s`` in ``server_ns``, measure from ``client_ns``, stop the server.

    Returns ``bits_per_second`` (goodput at the receiver), ``retransmits`` (TCP) or
    ``lost_percent``/``jitter_ms`` (UDP), and the tool's ``raw`` JSON.
    """
    with iperf3_server(server_ns) as port:
        return iperf3_client(client_ns, server_ip, port, seconds=seconds, parallel=parallel,
                             reverse=reverse, bind=bind, udp=udp, bitrate=bitrate)


def ping_rtt(ns: Namespace, ip: str, count: int = 10, source: str | None = None,
             interval: float = 0.2) -> dict[str, Any]:
    """ICMP RTT from inside ``ns`` (:mod:`ratbond.lab.probe`).

    One extra probe goes first and is not counted: it pays for ARP on every hop.
    Returns ``sent``, ``received``, ``loss``, ``rtt_ms`` (answered probes) and, when any
    were answered, ``min_ms``/``avg_ms``/``median_ms``/``max_ms``.
    """
    argv = [sys.executable, "-m", "ratbond.lab.probe", ip, "--count", str(count + 1),
            "--interval", str(interval)]
    if source:
        argv += ["--source", source]
    raw = json.loads(ns.output(*argv, timeout=(count + 1) * interval + 10))
    rtts = [r for r in raw["rtt_ms"][1:] if r is not None]
    result: dict[str, Any] = {"sent": count, "received": len(rtts),
                              "loss": 1 - len(rtts) / count, "rtt_ms": rtts}
    if rtts:
        result.update(min_ms=min(rtts), avg_ms=statistics.fmean(rtts),
                      median_ms=statistics.median(rtts), max_ms=max(rtts))
    return result
