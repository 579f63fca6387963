"""Helpers for end-to-end tunnel tests: traffic endpoints in namespaces, per-path counts.

Topology (see ``ratbond.lab.topology``)::

    [client ns] wan1..wanN ──(emulator or direct veth)── [isp ns, SNAT] ── [server ns]
       ratbond client, tun660 10.10.10.2                  ratbond server, tun660 10.10.10.1
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ratbond.lab.bonded import BondedTunnel
from ratbond.lab.netns import Namespace, stop_process

XFER = str(Path(__file__).with_name("xfer.py"))


def start_listener(ns: Namespace, *args: str, script: str = XFER) -> subprocess.Popen[bytes]:
    """Start a helper script (xfer.py by default) inside ``ns``; wait for its READY line."""
    proc = ns.popen(sys.executable, script, *args, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"READY":
        stop_process(proc)
        raise AssertionError(f"listener {args} did not start: {line!r}")
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> dict[str, Any]:
    """Wait for an xfer.py process and parse its JSON result line."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise
    assert proc.returncode == 0, err.decode(errors="replace")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def tcp_upload(tunnel: BondedTunnel, host: str, port: int, size: int, seed: str, *,
               timeout: float = 120.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Client namespace sends ``size`` bytes to a receiver in the server namespace."""
    receiver = start_listener(tunnel.server_ns, "tcp-recv", host, str(port))
    try:
        sent = tunnel.client_ns.run(sys.executable, XFER, "tcp-send", host, str(port),
                                    str(size), seed, timeout=timeout)
    finally:
        got = finish(receiver, timeout=timeout)
    return json.loads(sent.stdout.decode().strip()), got


def tcp_download(tunnel: BondedTunnel, host: str, port: int, size: int, seed: str, *,
                 timeout: float = 120.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """A server-namespace sender serves ``size`` bytes; the client namespace fetches them."""
    sender = start_listener(tunnel.server_ns, "tcp-serve", host, str(port), str(size), seed)
    try:
        got = tunnel.client_ns.run(sys.executable, XFER, "tcp-fetch", host, str(port),
                                   timeout=timeout)
    finally:
        sent = finish(sender, timeout=timeout)
    return sent, json.loads(got.stdout.decode().strip())


def path_counter(status: dict[str, Any], field: str) -> dict[int, int]:
    """``field`` of every path in a status snapshot, by path id."""
    return {int(p["path_id"]): int(p.get(field) or 0) for p in status.get("paths", [])}


def delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def ping(ns: Namespace, address: str, count: int = 3) -> bool:
    proc = ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", address, check=False,
                  timeout=30)
    return proc.returncode == 0
