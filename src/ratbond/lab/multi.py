"""N client routers on one server, in namespaces: the lab for ``ratbond server --clients``.

Topology (plain veths, no link emulation: this lab is about many clients, not WAN
behaviour)::

    [c1 ns] wan1 10.99.1.2/30 ───── c1w1 10.99.1.1/30 ┐
            wan2 10.99.1.6/30 ───── c1w2 10.99.1.5/30 │ [server ns]  192.0.2.1/32 on lo
    [c2 ns] wan1 10.99.2.2/30 ───── c2w1 ...          │   ratbond server --clients FILE
            ...                                       ┘   tun<701>, tun<702>, ...

Each client namespace is set up like a real router: a table per WAN with its default
route, ``ip rule from <wan-ip> lookup <table>``, nothing in main, so ratbond's WAN
discovery finds both links.  Client ``i`` has tunnel id ``700 + i``, tunnel subnet
``10.20.i.0/30`` (client ``.1``, server ``.2``) and ``fd00:7262:6f6e:64<i>::/64``, a LAN
``192.168.i.0/24`` routed to it, and
its own secret file.  Everything lives in namespaces with a unique prefix and is removed by
:meth:`MultiLab.down` (also on errors: use it as a context manager).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ratbond.lab.bonded import SERVER_PORT, fetch_status, wait_until
from ratbond.lab.netns import Namespace, NamespaceGroup, stop_process, unique_prefix

SERVER_IP = "192.0.2.1"
SERVER_STATUS_PORT = 8091
CLIENT_STATUS_PORT = 8092
MAX_CLIENTS = 250
WAN_TABLE_BASE = 100


@dataclass
class LabClient:
    """One router of the lab and how the server's clients file describes it."""

    index: int
    ns: Namespace
    secret_file: Path
    wans: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"site{self.index}"

    @property
    def tunnel_id(self) -> int:
        return 700 + self.index

    @property
    def tunnel_net(self) -> str:
        return f"10.20.{self.index}.0/30"

    @property
    def tunnel_ip(self) -> str:
        """The client's end (first host, as ``--tunnel-ip``)."""
        return f"10.20.{self.index}.1"

    @property
    def server_tunnel_ip(self) -> str:
        return f"10.20.{self.index}.2"

    @property
    def tunnel_net6(self) -> str:
        return f"fd00:7262:6f6e:{0x6400 + self.index:x}::/64"

    @property
    def tunnel_ip6(self) -> str:
        """The client's IPv6 end (``::1``); the server's is ``::2``."""
        return f"fd00:7262:6f6e:{0x6400 + self.index:x}::1"

    @property
    def server_tunnel_ip6(self) -> str:
        return f"fd00:7262:6f6e:{0x6400 + self.index:x}::2"

    @property
    def lan(self) -> str:
        return f"192.168.{self.index}.0/24"

    def toml(self) -> str:
        return (f'[[client]]\nname = "{self.name}"\nsecret-file = "{self.secret_file}"\n'
                f"tunnel-id = {self.tunnel_id}\ntunnel-ip = \"{self.tunnel_net}\"\n"
                f'tunnel-ip6 = "{self.tunnel_net6}"\n'
                f'routes = ["{self.lan}"]\n\n')


@dataclass
class MultiLab:
    """The namespaces, secrets and processes of one multi-client lab."""

    group: NamespaceGroup
    server_ns: Namespace
    clients: list[LabClient]
    workdir: Path
    server: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    # -- building -------------------------------------------------------------------------

    @classmethod
    def up(cls, count: int, *, wans: int = 2, tag: str | None = None) -> MultiLab:
        if not 1 <= count <= MAX_CLIENTS:
            raise ValueError(f"clients: {count} outside 1..{MAX_CLIENTS}")
        if not 1 <= wans <= 63:
            raise ValueError(f"wans: {wans} outside 1..63")
        group = NamespaceGroup(unique_prefix(tag))
        workdir = Path(tempfile.mkdtemp(prefix="ratbond-multi-"))
        try:
            server_ns = group.add("srv")
            server_ns.run("ip", "addr", "add", f"{SERVER_IP}/32", "dev", "lo")
            lab = cls(group, server_ns, [], workdir)
            for index in range(1, count + 1):
                lab.clients.append(lab._add_client(index, wans))
            lab.write_clients_file()
        except BaseException:
            group.close()
            _remove_dir(workdir)
            raise
        return lab

    def _add_client(self, index: int, wans: int) -> LabClient:
        ns = self.group.add(f"c{index}")
        for link in range(1, wans + 1):
            base = (link - 1) * 4
            server_if, client_if = f"c{index}w{link}", f"wan{link}"
            server_ip, client_ip = f"10.99.{index}.{base + 1}", f"10.99.{index}.{base + 2}"
            self.server_ns.run("ip", "link", "add", server_if, "type", "veth", "peer", "name",
                               client_if, "netns", ns.name)
            self.server_ns.run("ip", "addr", "add", f"{server_ip}/30", "dev", server_if)
            self.server_ns.run("ip", "link", "set", server_if, "up")
            ns.run("ip", "addr", "add", f"{client_ip}/30", "dev", client_if)
            ns.run("ip", "link", "set", client_if, "up")
            table = str(WAN_TABLE_BASE + link)
            ns.run("ip", "route", "add", "default", "via", server_ip, "dev", client_if,
                   "table", table)
            ns.run("ip", "rule", "add", "from", client_ip, "lookup", table)
        secret_file = self.workdir / f"site{index}.key"
        # the format of `ratbond genkey`: base64 of 32 random bytes
        secret_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        os.chmod(secret_file, 0o600)
        return LabClient(index, ns, secret_file, wans)

    @property
    def clients_file(self) -> Path:
        return self.workdir / "clients.toml"

    def write_clients_file(self, clients: list[LabClient] | None = None) -> None:
        chosen = self.clients if clients is None else clients
        self.clients_file.write_text("".join(c.toml() for c in chosen))

    # -- processes ------------------------------------------------------------------------

    def _log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start_server(self, *args: str) -> None:
        with self._log("server").open("ab") as log:
            self.server = self.server_ns.popen(
                sys.executable, "-m", "ratbond", "server", "--nosyslog",
                f"--listen-addr=0.0.0.0:{SERVER_PORT}",
                f"--http-listen-addr=127.0.0.1:{SERVER_STATUS_PORT}",
                f"--clients={self.clients_file}", *self.extra_args, *args,
                stdout=log, stderr=subprocess.STDOUT)

    def start_client(self, client: LabClient, *, secret_file: Path | None = None,
                     tunnel_net: str | None = None, tunnel_id: int | None = None) -> None:
        """Start ``client``'s router (optionally with another secret or addressing)."""
        with self._log(client.name).open("ab") as log:
            client.proc = client.ns.popen(
                sys.executable, "-m", "ratbond", "client", "--nosyslog",
                f"--connect-addr={SERVER_IP}:{SERVER_PORT}",
                f"--http-listen-addr=127.0.0.1:{CLIENT_STATUS_PORT}",
                f"--tunnel-id={tunnel_id or client.tunnel_id}",
                f"--tunnel-ip={tunnel_net or client.tunnel_net}",
                f"--tunnel-ip6={client.tunnel_net6}",
                f"--secret-file={secret_file or client.secret_file}", *self.extra_args,
                stdout=log, stderr=subprocess.STDOUT)

    def stop_server(self) -> None:
        if self.server is not None:
            stop_process(self.server)
            self.server = None

    def stop_client(self, client: LabClient) -> None:
        if client.proc is not None:
            stop_process(client.proc)
            client.proc = None

    def reload_server(self) -> None:
        """SIGHUP: the server re-reads the clients file."""
        assert self.server is not None
        os.kill(self.server.pid, signal.SIGHUP)

    # -- observing ------------------------------------------------------------------------

    def server_status(self) -> dict[str, Any]:
        return fetch_status(self.server_ns, SERVER_STATUS_PORT)

    def client_status(self, client: LabClient) -> dict[str, Any]:
        return fetch_status(client.ns, CLIENT_STATUS_PORT)

    def clients_up(self, status: dict[str, Any] | None = None) -> set[str]:
        """Names of the clients whose every path is up on the server."""
        status = status if status is not None else self.server_status()
        return {block["name"] for block in status.get("clients", [])
                if block.get("state") == "up"}

    def wait_clients_up(self, names: set[str], timeout: float) -> float:
        def ready() -> bool:
            self.check_alive()
            return names <= self.clients_up()
        try:
            return wait_until(ready, timeout, interval=0.05, what=f"clients {sorted(names)} up")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def check_alive(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            raise RuntimeError(f"ratbond server exited with {self.server.returncode}\n"
                               f"{self.logs()}")

    def logs(self, tail: int = 40) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def tracebacks(self) -> list[str]:
        return [path.name for path in self.workdir.glob("*.log")
                if "Traceback" in path.read_text(errors="replace")]

    # -- teardown -------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every process and remove every namespace and file; never raises."""
        for client in self.clients:
            with contextlib.suppress(Exception):
                self.stop_client(client)
        with contextlib.suppress(Exception):
            self.stop_server()
        with contextlib.suppress(Exception):
            self.group.close()
        _remove_dir(self.workdir)

    def __enter__(self) -> MultiLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _remove_dir(path: Path) -> None:
    for child in path.glob("*"):
        with contextlib.suppress(OSError):
            child.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
