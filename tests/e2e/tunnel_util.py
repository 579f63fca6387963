"""Helpers for end-to-end tunnel tests: traffic endpoints in namespaces, per-path counts.

Topology (see ``ratbond.lab.topology``)::

    [client ns] wan1..wanN ──(emulator or direct veth)── [isp ns, SNAT] ── [server ns]
       ratbond client, tun660 10.10.10.1                  ratbond server, tun660 10.10.10.2
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ratbond.lab.bonded import BondedTunnel
from ratbond.lab.netns import Namespace, stop_process
from ratbond.lab.topology import Lab

XFER = str(Path(__file__).with_name("xfer.py"))
LabFactory = Callable[..., Lab]  # the ``lab`` fixture (conftest.py): links -> a running Lab


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


class Capture:
    """``tcpdump -l`` inside a namespace whose lines are collected as they come.

    :meth:`start` returns only once tcpdump says it is listening *and* a canary packet
    sent by the caller has been seen, so an empty capture afterwards means nothing matched,
    not that tcpdump was not running yet.
    """

    def __init__(self, ns: Namespace, iface: str, bpf: str) -> None:
        self._proc = ns.popen("tcpdump", "-n", "-l", "-i", iface, bpf,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._lines: list[str] = []
        self._listening = threading.Event()
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_out(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            with self._changed:
                self._lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()

    def _read_err(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            if b"listening on" in raw:
                self._listening.set()

    def wait_listening(self, timeout: float = 10.0) -> None:
        if not self._listening.wait(timeout):
            raise AssertionError(f"tcpdump did not start listening (exit {self._proc.poll()})")

    def wait_for(self, text: str, send: Callable[[], None], timeout: float = 10.0) -> str:
        """Call ``send`` (a canary) until a captured line contains ``text``; that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            send()
            with self._changed:
                self._changed.wait_for(lambda: any(text in x for x in self._lines), 0.5)
                found = next((x for x in self._lines if text in x), None)
            if found is not None:
                return found
        raise AssertionError(f"tcpdump never saw {text!r}; it saw {self.lines()}")

    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def stop(self) -> list[str]:
        """Stop tcpdump (it flushes on SIGTERM) and return every line it printed."""
        stop_process(self._proc)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.lines()


def send_udp(ns: Namespace, host: str, port: int, payload: str) -> None:
    """One UDP datagram from inside ``ns``."""
    code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))")
    ns.run(sys.executable, "-c", code, host, str(port), payload, timeout=10)
