"""A ratbond server and client running inside a lab: start, observe, restart, stop.

Used by the end-to-end tests, the benchmarks and ``ratbond demo``; everything it starts runs
inside the lab's namespaces and is stopped by :meth:`BondedTunnel.stop` (also on errors).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ratbond.lab.netns import Namespace, NetnsError, stop_process

SERVER_PORT = 12345
SERVER_STATUS_PORT = 8091
CLIENT_STATUS_PORT = 8092
# Default --tunnel-ip/--tunnel-ip6: the client takes the first host, the server the second
# (the Go original's order).  Tests use these names, never the literals.
CLIENT_TUNNEL_IP = "10.10.10.1"
SERVER_TUNNEL_IP = "10.10.10.2"
CLIENT_TUNNEL_IP6 = "fd00:7262:6f6e:6400::1"
SERVER_TUNNEL_IP6 = "fd00:7262:6f6e:6400::2"

_FETCH = ("import sys,urllib.request;"
          "sys.stdout.write(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode())")


class TunnelError(RuntimeError):
    """The tunnel did not reach the expected state; carries the processes' logs."""


def fetch_status(ns: Namespace, port: int) -> dict[str, Any]:
    """The status JSON of a ratbond process listening on 127.0.0.1:port inside ``ns``."""
    out = ns.run(sys.executable, "-c", _FETCH, f"http://127.0.0.1:{port}/status.json",
                 timeout=10).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def link_of(path: dict[str, Any]) -> int | None:
    """The lab link (1-based) a status path runs over: the client's rows name their WAN,
    the server's show the link's SNAT address (``198.18.0.<10+i>``, see ``topology``)."""
    wan = path.get("wan")
    if isinstance(wan, str) and wan.startswith("wan") and wan[3:].isdigit():
        return int(wan[3:])
    remote = path.get("remote")
    if isinstance(remote, str) and remote.startswith("198.18.0."):
        host = remote.rsplit(":", 1)[0].removeprefix("198.18.0.")
        if host.isdigit() and int(host) > 10:
            return int(host) - 10
    return None


def by_link(status: dict[str, Any], counter: str) -> dict[int, int]:
    """A per-path counter (``tx_bytes``, ``tx_packets``...) added up per lab link."""
    out: dict[int, int] = {}
    for path in status.get("paths", []):
        link = link_of(path)
        if link is not None:
            out[link] = out.get(link, 0) + int(path.get(counter) or 0)
    return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1,
               what: str = "condition") -> float:
    """Poll until ``predicate()`` holds; returns the seconds it took, raises on timeout."""
    start = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except (NetnsError, subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:g} s"
                       + (f" (last error: {last_error})" if last_error else ""))


@dataclass
class BondedTunnel:
    """Server in the lab's server namespace, client in its client namespace."""

    server_ns: Namespace
    client_ns: Namespace
    server_ip: str
    server_args: Sequence[str] = ()
    client_args: Sequence[str] = ()
    log_dir: Path = field(default_factory=lambda: Path("/tmp"))
    server: subprocess.Popen[bytes] | None = None
    client: subprocess.Popen[bytes] | None = None

    def _ratbond(self, ns: Namespace, role: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{ns.name}-{role}.log"
        handle = log_path.open("ab")
        try:
            return ns.popen(sys.executable, "-m", "ratbond", role, "--nosyslog", *args,
                            stdout=handle, stderr=subprocess.STDOUT)
        finally:
            handle.close()

    def start_server(self) -> None:
        self.server = self._ratbond(self.server_ns, "server", [
            f"--listen-addr=0.0.0.0:{SERVER_PORT}",
            f"--http-listen-addr=127.0.0.1:{SERVER_STATUS_PORT}", *self.server_args])

    def start_client(self) -> None:
        self.client = self._ratbond(self.client_ns, "client", [
            f"--connect-addr={self.server_ip}:{SERVER_PORT}",
            f"--http-listen-addr=127.0.0.1:{CLIENT_STATUS_PORT}", *self.client_args])

    def start(self, *, paths: int, timeout: float = 20.0) -> None:
        """Start both ends and wait until ``paths`` paths are up on both sides."""
        self.start_server()
        self.start_client()
        self.wait_paths_up(paths, timeout=timeout)

    def client_status(self) -> dict[str, Any]:
        return fetch_status(self.client_ns, CLIENT_STATUS_PORT)

    def server_status(self) -> dict[str, Any]:
        return fetch_status(self.server_ns, SERVER_STATUS_PORT)

    @staticmethod
    def paths_up(status: dict[str, Any]) -> list[int]:
        return sorted(int(p["path_id"]) for p in status.get("paths", [])
                      if p.get("state") == "up")

    def wait_paths_up(self, count: int, timeout: float = 20.0) -> float:
        """Wait until both ends see exactly ``count`` paths up; returns seconds taken."""
        def ready() -> bool:
            self.check_alive()
            return (len(self.paths_up(self.client_status())) == count
                    and len(self.paths_up(self.server_status())) == count)
        try:
            return wait_until(ready, timeout, what=f"{count} paths up on both ends")
        except TimeoutError as exc:
            raise TunnelError(f"{exc}\n{self.logs()}") from None

    def check_alive(self) -> None:
        for role, proc in (("server", self.server), ("client", self.client)):
            if proc is not None and proc.poll() is not None:
                raise TunnelError(f"ratbond {role} exited with {proc.returncode}\n{self.logs()}")

    def logs(self, tail: int = 60) -> str:
        parts = []
        for path in sorted(self.log_dir.glob(f"{self.server_ns.name}-*.log")) + sorted(
                self.log_dir.glob(f"{self.client_ns.name}-*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def errors(self) -> list[str]:
        """Log lines of either end that show an exception escaped into the event loop."""
        found = []
        for path in sorted(self.log_dir.glob(f"{self.server_ns.name}-*.log")) + sorted(
                self.log_dir.glob(f"{self.client_ns.name}-*.log")):
            text = path.read_text(errors="replace")
            if "Traceback" in text:
                found.append(f"--- {path.name}\n{text[-3000:]}")
        return found

    def stop_client(self) -> int | None:
        code = stop_process(self.client) if self.client is not None else None
        self.client = None
        return code

    def stop_server(self) -> int | None:
        code = stop_process(self.server) if self.server is not None else None
        self.server = None
        return code

    def stop(self) -> None:
        """Stop both ends (client first, so it can say goodbye); never raises."""
        with contextlib.suppress(Exception):
            self.stop_client()
        with contextlib.suppress(Exception):
            self.stop_server()

    def __enter__(self) -> BondedTunnel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
