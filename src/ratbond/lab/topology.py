"""A whole deployment on one machine: client router, emulated WAN links, ISP, server.

```
  [client ns]                [emu<i> ns]              [isp ns]                    [server ns]
  wan<i> 10.201.i.2/24 ──veth── e<i>a <emulator> e<i>b ──veth── isp<i> 10.201.i.1/24
                                                           isp0 198.18.0.1/24 ──veth── srv0
                                                           (+ 198.18.0.<10+i>)   198.18.0.100/24
  client: table 100+i = {10.201.i.0/24 dev wan<i>, default via 10.201.i.1 dev wan<i>
          src 10.201.i.2}; rule 10000: from 10.201.i.2 lookup 100+i; nothing in main
  isp:    forwarding; SNAT 10.201.i.0/24 out of isp0 -> 198.18.0.<10+i>
  server: default via 198.18.0.1
```

With ``Lab.up(links, ipv6=True)`` every WAN-side link is dual-stack as well (the default
lab disables nothing but leaves IPv6 unconfigured outside the tunnel)::

  client: wan<i> fd01:201:i::2/64, table 100+i = {fd01:201:i::/64, default via
          fd01:201:i::1 src fd01:201:i::2}; rule 10000: from fd01:201:i::2 lookup 100+i
  isp:    isp<i> fd01:201:i::1/64, isp0 fd02::1/64 (+ fd02::<10+i>); IPv6 forwarding;
          SNAT fd01:201:i::/64 out of isp0 -> fd02::<10+i>
  server: srv0 fd02::100/64, default via fd02::1

The client side is exactly the "Regular Linux" policy-routing example of the original
README, so WAN discovery and per-link sockets meet what they meet on a real router; the
server sees every link as its own public address. A "direct" link is a plain veth from
wan<i> to isp<i> (no emulator), for CPU-bound measurements.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ratbond.lab import control
from ratbond.lab.netns import Namespace, delete_all, list_namespaces, stop_process, unique_prefix
from ratbond.lab.spec import LinkSpec
from ratbond.lab.state import LabError, LabState, check_name, load_state

SERVER_PUBLIC_IP = "198.18.0.100"
ISP_SERVER_SIDE_IP = "198.18.0.1"
SERVER_PUBLIC_IP6 = "fd02::100"
ISP_SERVER_SIDE_IP6 = "fd02::1"
RULE_PREF = 10000
OFFLOADS_OFF = ("tx", "off", "gso", "off", "tso", "off", "gro", "off")
BUILD_TIMEOUT = 15.0

__all__ = ["SERVER_PUBLIC_IP", "SERVER_PUBLIC_IP6", "Lab", "LabError", "LinkControl", "LinkSpec"]


def wan_address(i: int) -> str:
    return f"10.201.{i}.2"


def isp_address(i: int) -> str:
    return f"10.201.{i}.1"


def public_address(i: int) -> str:
    """The address the ISP SNATs link ``i`` to: what the server sees as its source."""
    return f"198.18.0.{10 + i}"


def wan_address6(i: int) -> str:
    return f"fd01:201:{i}::2"


def isp_address6(i: int) -> str:
    return f"fd01:201:{i}::1"


def public_address6(i: int) -> str:
    """The IPv6 address the ISP SNATs link ``i`` to (``ipv6=True`` labs)."""
    return f"fd02::{10 + i}"


def table_id(i: int) -> int:
    return 100 + i


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Keep Ctrl-C from cutting a teardown in half (only the main thread owns signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class LinkControl:
    """Runtime changes of one emulated link, through its emulator's control socket."""

    def __init__(self, index: int, spec: LinkSpec, control_path: str) -> None:
        self.index = index
        self.spec = spec
        self.control_path = control_path

    def set(self, *, rate_down: float | None = None, rate_up: float | None = None,
            delay_ms: float | None = None, loss: float | None = None,
            jitter_ms: float | None = None, queue_ms: float | None = None) -> None:
        """Change what is given (None = keep); delay, jitter and loss apply both ways."""
        both = {k: v for k, v in (("delay_ms", delay_ms), ("loss", loss),
                                  ("jitter_ms", jitter_ms), ("queue_ms", queue_ms))
                if v is not None}
        down = dict(both) if rate_down is None else {**both, "rate_mbit": rate_down}
        up = dict(both) if rate_up is None else {**both, "rate_mbit": rate_up}
        self._send({"cmd": "set", "down": down, "up": up})

    def blackhole(self) -> None:
        """Drop everything both ways (frames already on the wire included)."""
        self._send({"cmd": "set", "down": {"blackhole": True}, "up": {"blackhole": True}})

    def restore(self) -> None:
        """Back to the LinkSpec the lab was built with, blackhole off."""
        s = self.spec
        common = {"delay_ms": s.delay_ms, "jitter_ms": s.jitter_ms, "loss": s.loss,
                  "queue_ms": s.queue_ms, "blackhole": False}
        self._send({"cmd": "set", "down": {**common, "rate_mbit": s.down_mbit},
                    "up": {**common, "rate_mbit": s.up_mbit}})

    def settings(self) -> dict[str, Any]:
        """Current parameters per direction (``{"down": {...}, "up": {...}}``)."""
        reply = self._send({"cmd": "get"})
        return {"down": reply["down"], "up": reply["up"]}

    def counters(self) -> dict[str, Any]:
        reply = self._send({"cmd": "counters"})
        return {"down": reply["down"], "up": reply["up"], "tx_errors": reply["tx_errors"]}

    def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            return control.request(self.control_path, message)
        except control.EmulatorControlError as exc:
            raise LabError(f"link {self.index}: {exc}") from None


class Lab:
    """A running lab; build with :meth:`up`, find a running one with :meth:`attach`."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self.name = state.name
        self.prefix = state.prefix
        self.links = [LinkSpec.from_dict(d) for d in state.links]
        self.server_public_ip = SERVER_PUBLIC_IP
        self.ipv6 = state.ipv6
        #: The server's WAN-side IPv6 address, in an ``ipv6=True`` lab only.
        self.server_public_ip6 = SERVER_PUBLIC_IP6 if state.ipv6 else None
        self.wan_names = [f"wan{i}" for i in range(1, len(self.links) + 1)]
        self.client = Namespace(self.prefix + "client")
        self.isp = Namespace(self.prefix + "isp")
        self.server = Namespace(self.prefix + "server")
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._closed = False

    # ----- lifecycle -------------------------------------------------------------------

    @classmethod
    def up(cls, links: Sequence[LinkSpec], *, name: str | None = None,
           ipv6: bool = False) -> Lab:
        """Build everything and start the emulators; on any failure (or Ctrl-C) nothing is
        left behind and the exception propagates.  ``ipv6``: the WAN side is dual-stack
        (IPv6 WAN addresses, tables and rules, ISP and server), for IPv6 outer transport."""
        if not links:
            raise LabError("a lab needs at least one link")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        prefix = unique_prefix()
        name = check_name(name or prefix.rstrip("-"))
        _refuse_existing(name)
        lab = cls(LabState(name=name, prefix=prefix, links=[s.to_dict() for s in links],
                           ipv6=ipv6))
        try:
            lab.state.save()
            lab.state.workdir.mkdir(mode=0o700, exist_ok=True)
            lab._build()
            lab.state.phase = "up"
            lab.state.save()
        except BaseException:
            lab.down()
            raise
        return lab

    @classmethod
    def attach(cls, name: str) -> Lab:
        """The lab another process built under ``name``."""
        return cls(load_state(name))

    def down(self) -> None:
        """Stop every emulator, delete every namespace, remove the state; idempotent."""
        with _signals_deferred():
            for proc in self._procs.values():
                stop_process(proc, timeout=2.0)
            self._procs.clear()
            for info in self.state.emulators.values():
                _kill_if_ours(int(info["pid"]), str(info["control"]))
            delete_all(self.prefix)
            self.state.remove()
            self._closed = True

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()

    # ----- queries and runtime changes ------------------------------------------------

    def wan_address(self, i: int) -> str:
        self._check_index(i)
        return wan_address(i)

    def public_address(self, i: int) -> str:
        self._check_index(i)
        return public_address(i)

    def namespace(self, role: str) -> Namespace:
        """``client``, ``server``, ``isp`` or ``emu<i>`` (emulated links only)."""
        roles = self.roles()
        if role not in roles:
            raise LabError(f"no namespace {role!r} in lab {self.name!r}; have {sorted(roles)}")
        return Namespace(self.prefix + role)

    def roles(self) -> list[str]:
        return ["client", "isp", "server"] + [f"emu{i}" for i, s in self._emulated()]

    def link(self, i: int) -> LinkControl:
        self._check_index(i)
        info = self.state.emulators.get(str(i))
        if info is None:
            raise LabError(f"link {i} is direct: it has no emulator to change")
        return LinkControl(i, self.links[i - 1], str(info["control"]))

    def set_wan_updown(self, i: int, up: bool) -> None:
        """``ip link set wan<i> down|up`` in the client. Taking a link down makes the kernel
        drop its routes; bringing it up puts the table back, as a router's DHCP client or
        network manager would, so WAN discovery sees the link leave and return."""
        self._check_index(i)
        if not up:
            self.client.run("ip", "link", "set", f"wan{i}", "down")
            return
        _batch(self.client, [f"link set wan{i} up"]
               + [cmd.replace("route add", "route replace", 1)
                  for cmd in _policy_routing(i) if cmd.startswith("route add")])

    def counters(self, i: int) -> dict[str, Any]:
        """Per direction ``passed/lost/tail_dropped/blackholed`` (+ bytes, in flight).

        A direct link has no emulator: its counts come from the kernel's wan<i> stats.
        """
        self._check_index(i)
        if str(i) in self.state.emulators:
            return self.link(i).counters()
        stats = json.loads(self.client.output("ip", "-j", "-s", "link", "show", f"wan{i}"))
        s64 = stats[0]["stats64"]
        zero = {"lost": 0, "tail_dropped": 0, "blackholed": 0, "in_flight": 0}
        return {"down": {"passed": s64["rx"]["packets"], "passed_bytes": s64["rx"]["bytes"],
                         **zero},
                "up": {"passed": s64["tx"]["packets"], "passed_bytes": s64["tx"]["bytes"],
                       **zero},
                "tx_errors": 0}

    def is_alive(self) -> bool:
        """All namespaces exist and every emulator process runs."""
        existing = set(list_namespaces(self.prefix))
        if not all(self.prefix + r in existing for r in self.roles()):
            return False
        return all(_pid_alive(int(e["pid"])) for e in self.state.emulators.values())

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, prefix={self.prefix!r}, links={len(self.links)})"

    # ----- building ---------------------------------------------------------------------

    def _emulated(self) -> list[tuple[int, LinkSpec]]:
        return [(i, s) for i, s in enumerate(self.links, 1) if not s.direct]

    def _check_index(self, i: int) -> None:
        if not 1 <= i <= len(self.links):
            raise LabError(f"link {i}: lab {self.name!r} has links 1..{len(self.links)}")

    def _build(self) -> None:
        ns = {role: Namespace.create(self.prefix + role) for role in self.roles()}
        for namespace in ns.values():
            _sysctl(namespace, "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0")
        _sysctl(ns["isp"], "net.ipv4.ip_forward=1")
        for role, namespace in ns.items():
            if role.startswith("emu"):  # a bump in the wire: no IP stack chatter of its own
                _sysctl(namespace, "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1")
        client, isp, server = ns["client"], ns["isp"], ns["server"]
        for i, spec in enumerate(self.links, 1):
            self._wire_link(i, spec, ns)
        _batch(isp, ["link add isp0 type veth peer name srv0 netns " + server.name,
                     "link set isp0 up",
                     f"addr add {ISP_SERVER_SIDE_IP}/24 dev isp0"]
               + [f"addr add {public_address(i)}/24 dev isp0"
                  for i in range(1, len(self.links) + 1)])
        _batch(server, ["link set srv0 up", f"addr add {SERVER_PUBLIC_IP}/24 dev srv0",
                        f"route add default via {ISP_SERVER_SIDE_IP} dev srv0"])
        isp.run("nft", "-f", "-", input_bytes=self._nft_ruleset().encode())
        _batch(client, [cmd for i in range(1, len(self.links) + 1)
                        for cmd in _policy_routing(i)])
        if self.ipv6:
            self._build_ipv6(client, isp, server)
        for i, spec in self._emulated():
            self._start_emulator(i, spec)
        deadline = time.monotonic() + BUILD_TIMEOUT
        for i, _spec in self._emulated():
            proc = self._procs[i]
            control.wait_ready(self.state.emulators[str(i)]["control"],
                               timeout=max(0.5, deadline - time.monotonic()),
                               alive=lambda p=proc: p.poll() is None)  # type: ignore[misc]

    def _wire_link(self, i: int, spec: LinkSpec, ns: dict[str, Namespace]) -> None:
        client, isp = ns["client"], ns["isp"]
        if spec.direct:
            _batch(client, [f"link add wan{i} type veth peer name isp{i} netns {isp.name}"])
        else:
            emu = ns[f"emu{i}"]
            _batch(client, [f"link add wan{i} type veth peer name e{i}a netns {emu.name}"])
            _batch(emu, [f"link add e{i}b type veth peer name isp{i} netns {isp.name}",
                         f"link set e{i}a up", f"link set e{i}b up",
                         f"link set e{i}a promisc on", f"link set e{i}b promisc on"])
            # Forwarded TCP needs real checksums and MTU-sized frames on both sides of the
            # emulator (docs/design.md, "The lab"): every veth end along an emulated link
            # is plain.
            for namespace, dev in ((emu, f"e{i}a"), (emu, f"e{i}b"), (client, f"wan{i}"),
                                   (isp, f"isp{i}")):
                namespace.run("ethtool", "-K", dev, *OFFLOADS_OFF)
        _batch(isp, [f"link set isp{i} up", f"addr add {isp_address(i)}/24 dev isp{i}"])

    def _build_ipv6(self, client: Namespace, isp: Namespace, server: Namespace) -> None:
        """The IPv6 half of a dual-stack WAN side (``nodad``: usable at once)."""
        count = len(self.links)
        _sysctl(isp, "net.ipv6.conf.all.forwarding=1")
        _batch(isp, [f"addr add {isp_address6(i)}/64 dev isp{i} nodad"
                     for i in range(1, count + 1)]
               + [f"addr add {ISP_SERVER_SIDE_IP6}/64 dev isp0 nodad"]
               + [f"addr add {public_address6(i)}/64 dev isp0 nodad"
                  for i in range(1, count + 1)], ipv6=True)
        _batch(server, [f"addr add {SERVER_PUBLIC_IP6}/64 dev srv0 nodad",
                        f"route add ::/0 via {ISP_SERVER_SIDE_IP6} dev srv0"], ipv6=True)
        isp.run("nft", "-f", "-", input_bytes=_nft_ruleset6(count).encode())
        _batch(client, [cmd for i in range(1, count + 1) for cmd in _policy_routing6(i)],
               ipv6=True)

    def _nft_ruleset(self) -> str:
        rules = "\n".join(
            f"    oifname \"isp0\" ip saddr 10.201.{i}.0/24 snat to {public_address(i)}"
            for i in range(1, len(self.links) + 1))
        return ("table ip ratbond_lab {\n  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f"{rules}\n  }}\n}}\n")

    def _start_emulator(self, i: int, spec: LinkSpec) -> None:
        workdir = self.state.workdir
        path = str(workdir / f"emu{i}.sock")
        argv = [sys.executable, "-m", "ratbond.lab.emulator",
                "--client-if", f"e{i}a", "--isp-if", f"e{i}b", "--control", path,
                "--down-mbit", _rate_arg(spec.down_mbit), "--up-mbit", _rate_arg(spec.up_mbit),
                "--delay-ms", str(spec.delay_ms), "--jitter-ms", str(spec.jitter_ms),
                "--loss", str(spec.loss), "--queue-ms", str(spec.queue_ms)]
        with open(workdir / f"emu{i}.log", "wb") as log:
            proc = self.namespace(f"emu{i}").popen(*argv, stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=subprocess.STDOUT)
        self._procs[i] = proc
        self.state.emulators[str(i)] = {"pid": proc.pid, "control": path}
        self.state.save()


def _policy_routing(i: int) -> list[str]:
    """The original README's "Regular Linux" layout for WAN ``i`` (no route in main)."""
    wan, table = f"wan{i}", table_id(i)
    return [f"link set {wan} up",
            f"addr add {wan_address(i)}/24 dev {wan} noprefixroute",
            f"route add 10.201.{i}.0/24 dev {wan} proto static scope link "
            f"src {wan_address(i)} table {table}",
            f"route add default via {isp_address(i)} dev {wan} proto static "
            f"src {wan_address(i)} table {table}",
            f"rule add from {wan_address(i)} lookup {table} pref {RULE_PREF}"]


def _policy_routing6(i: int) -> list[str]:
    """The same layout for WAN ``i``'s IPv6 address, in the same table."""
    wan, table = f"wan{i}", table_id(i)
    return [f"addr add {wan_address6(i)}/64 dev {wan} noprefixroute nodad",
            f"route add fd01:201:{i}::/64 dev {wan} proto static table {table}",
            f"route add ::/0 via {isp_address6(i)} dev {wan} proto static "
            f"src {wan_address6(i)} table {table}",
            f"rule add from {wan_address6(i)} lookup {table} pref {RULE_PREF}"]


def _nft_ruleset6(count: int) -> str:
    rules = "\n".join(
        f"    oifname \"isp0\" ip6 saddr fd01:201:{i}::/64 snat to {public_address6(i)}"
        for i in range(1, count + 1))
    return ("table ip6 ratbond_lab6 {\n  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"{rules}\n  }}\n}}\n")


def _batch(ns: Namespace, commands: Sequence[str], *, ipv6: bool = False) -> None:
    """Many ``ip`` commands in one process (``ip -batch``); fails on the first error."""
    family = ["-6"] if ipv6 else []
    ns.run("ip", *family, "-batch", "-", input_bytes=("\n".join(commands) + "\n").encode())


def _sysctl(ns: Namespace, *settings: str) -> None:
    ns.run("sysctl", "-q", "-w", *settings)


def _rate_arg(rate: float | None) -> str:
    return "*" if rate is None else str(rate)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


def _kill_if_ours(pid: int, control_path: str) -> None:
    """SIGTERM an emulator another process started, only if the pid is still that
    emulator (its command line names our control socket), then wait briefly for it."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if control_path.encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            if not _pid_alive(pid):
                return
        except OSError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _refuse_existing(name: str) -> None:
    """A live lab keeps its name; a stale record (namespaces gone) is cleaned away."""
    try:
        old = load_state(name)
    except LabError:
        return
    if list_namespaces(old.prefix):
        raise LabError(f"lab {name!r} already exists; remove it with "
                       f"'ratbond lab down --name {name}' or pick another --name")
    Lab(old).down()
