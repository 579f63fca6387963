"""WAN discovery and link-state events over real netlink, inside a namespace.

    ns "cli" (one namespace; each WAN is a veth whose peer stays in the same namespace)
    wan1 10.1.0.2/24, fd01::2/64 <-> wan1p   table 101: default via 10.1.0.1 / fd01::1
    wan2 10.2.0.2/24             <-> wan2p   table 102: default via 10.2.0.1
    lan0 192.168.99.1/24         <-> lan0p   main: default via 192.168.99.254 (never a WAN)
    ip rule from <wan-ip> lookup <table>, as in the original README's "Regular Linux" setup.

The monitor (tests/e2e/linux_child.py:monitor) runs inside the namespace and prints JSON
lines; each step polls for the expected line with a short deadline.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ratbond.lab.netns import Namespace, namespace_group, stop_process
from tests.e2e.linux_child import REPO, child_argv

pytestmark = pytest.mark.root
DEADLINE = 3.0


def add_wan(ns: Namespace, n: int, *, v6: bool = False) -> None:
    ns.run("ip", "link", "add", f"wan{n}", "type", "veth", "peer", "name", f"wan{n}p")
    ns.run("ip", "addr", "add", f"10.{n}.0.2/24", "dev", f"wan{n}")
    ns.run("ip", "addr", "add", f"10.{n}.0.1/24", "dev", f"wan{n}p")
    ns.run("ip", "link", "set", f"wan{n}p", "up")
    ns.run("ip", "link", "set", f"wan{n}", "up")
    ns.run("ip", "rule", "add", "from", f"10.{n}.0.2", "lookup", str(100 + n), "pref", "10000")
    ns.run("ip", "route", "add", "default", "via", f"10.{n}.0.1", "dev", f"wan{n}",
           "src", f"10.{n}.0.2", "table", str(100 + n))
    if v6:
        ns.run("ip", "addr", "add", f"fd0{n}::2/64", "dev", f"wan{n}", "nodad")
        ns.run("ip", "-6", "route", "add", "default", "via", f"fd0{n}::1", "dev", f"wan{n}",
               "table", str(100 + n))


class Monitor:
    """The monitor child and the JSON lines it printed."""

    def __init__(self, ns: Namespace, rcvbuf: int = 4 << 20) -> None:
        self.proc = ns.popen(*child_argv("monitor", "0.05", "60", str(rcvbuf)), cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))

    def expect(self, match: Callable[[dict[str, Any]], bool],
               timeout: float = DEADLINE) -> dict[str, Any]:
        """The first line matching ``match``; lines before it must be unrelated noise."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("expected monitor line did not arrive in time") from None
            if match(line):
                return line

    def quiet(self, seconds: float = 0.4) -> list[dict[str, Any]]:
        """Lines that arrive within ``seconds`` (used to assert there were none)."""
        out = []
        try:
            while True:
                out.append(self.lines.get(timeout=seconds))
        except queue.Empty:
            return out

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_process(self.proc)


def build(ns: Namespace) -> None:
    add_wan(ns, 1, v6=True)
    add_wan(ns, 2)
    ns.run("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    ns.run("ip", "addr", "add", "192.168.99.1/24", "dev", "lan0")
    ns.run("ip", "link", "set", "lan0p", "up")
    ns.run("ip", "link", "set", "lan0", "up")
    ns.run("ip", "route", "add", "default", "via", "192.168.99.254", "dev", "lan0")


@pytest.fixture
def wan_lab() -> Iterator[tuple[Namespace, Monitor]]:
    with namespace_group() as group:
        ns = group.add("cli")
        build(ns)
        mon = Monitor(ns)
        try:
            yield ns, mon
        finally:
            mon.stop()


def is_(kind: str, name: str, family: int = 2) -> Callable[[dict[str, Any]], bool]:
    return lambda x: x["kind"] == kind and x.get("name") == name and x.get("family") == family


def test_scan_finds_exactly_the_wans(wan_lab: tuple[Namespace, Monitor]) -> None:
    _ns, mon = wan_lab
    scan = mon.expect(lambda x: x["kind"] == "scan")
    assert sorted((w["name"], w["address"], w["table"]) for w in scan["wans"]) == [
        ("wan1", "10.1.0.2", 101), ("wan1", "fd01::2", 101), ("wan2", "10.2.0.2", 102)]
    assert mon.quiet() == []  # a steady system produces no events


def test_link_down_then_up(wan_lab: tuple[Namespace, Monitor]) -> None:
    ns, mon = wan_lab
    mon.expect(lambda x: x["kind"] == "scan")
    ns.run("ip", "link", "set", "wan2", "down")
    assert mon.expect(is_("removed", "wan2"))["reason"] == "link-down"
    ns.run("ip", "link", "set", "wan2", "up")
    # Admin down flushed the table's IPv4 route; the network manager would put it back.
    ns.run("ip", "route", "replace", "default", "via", "10.2.0.1", "dev", "wan2",
           "src", "10.2.0.2", "table", "102")
    assert mon.expect(is_("added", "wan2"))["address"] == "10.2.0.2"


def test_carrier_lost_then_back(wan_lab: tuple[Namespace, Monitor]) -> None:
    ns, mon = wan_lab
    mon.expect(lambda x: x["kind"] == "scan")
    ns.run("ip", "link", "set", "wan2p", "down")  # the far end goes away: no carrier on wan2
    assert mon.expect(is_("removed", "wan2"))["reason"] == "carrier-lost"
    ns.run("ip", "link", "set", "wan2p", "up")
    mon.expect(is_("added", "wan2"))


def test_default_route_deleted_then_readded(wan_lab: tuple[Namespace, Monitor]) -> None:
    ns, mon = wan_lab
    mon.expect(lambda x: x["kind"] == "scan")
    ns.run("ip", "route", "del", "default", "table", "101")
    assert mon.expect(is_("removed", "wan1"))["reason"] == "route-removed"
    ns.run("ip", "-6", "route", "del", "default", "table", "101")
    assert mon.expect(is_("removed", "wan1", 10))["reason"] == "route-removed"
    ns.run("ip", "route", "add", "default", "via", "10.1.0.1", "dev", "wan1", "table", "101")
    mon.expect(is_("added", "wan1"))


def test_address_change_keeps_the_wan(wan_lab: tuple[Namespace, Monitor]) -> None:
    ns, mon = wan_lab
    mon.expect(lambda x: x["kind"] == "scan")
    # A new lease: new address first, the route follows, the old address goes (with
    # promote_secondaries, else the kernel drops the new secondary with the old primary).
    ns.run("sysctl", "-qw", "net.ipv4.conf.wan2.promote_secondaries=1")
    ns.run("ip", "addr", "add", "10.2.0.7/24", "dev", "wan2")
    ns.run("ip", "route", "replace", "default", "via", "10.2.0.1", "dev", "wan2",
           "src", "10.2.0.7", "table", "102")
    ns.run("ip", "addr", "del", "10.2.0.2/24", "dev", "wan2")
    line = mon.expect(lambda x: x["kind"] in ("address", "removed"))
    assert (line["kind"], line["name"], line.get("old"), line["address"]) == (
        "address", "wan2", "10.2.0.2", "10.2.0.7")
    assert [x for x in mon.quiet() if x.get("name") == "wan2"] == []


def test_primary_address_deleted_takes_the_wan_down(wan_lab: tuple[Namespace, Monitor]) -> None:
    ns, mon = wan_lab
    mon.expect(lambda x: x["kind"] == "scan")
    ns.run("ip", "addr", "del", "10.2.0.2/24", "dev", "wan2")
    assert mon.expect(is_("removed", "wan2"))["reason"] == "address-removed"


def test_new_wan_at_runtime(wan_lab: tuple[Namespace, Monitor]) -> None:
    ns, mon = wan_lab
    mon.expect(lambda x: x["kind"] == "scan")
    add_wan(ns, 3)
    line = mon.expect(lambda x: x["kind"] != "scan")
    assert (line["kind"], line["name"], line["address"], line["table"]) == (
        "added", "wan3", "10.3.0.2", 103)


def test_event_overrun_triggers_a_rescan_that_catches_lost_changes() -> None:
    with namespace_group() as group:
        ns = group.add("cli")
        build(ns)
        mon = Monitor(ns, rcvbuf=4096)  # tiny: a burst of events must overflow it
        try:
            mon.expect(lambda x: x["kind"] == "scan")
            mon.command("pause 1.0")
            mon.expect(lambda x: x["kind"] == "paused")
            batch = "".join(f"address add 172.16.{i // 250}.{i % 250 + 1}/32 dev lan0\n"
                            for i in range(300))
            ns.run("ip", "-batch", "-", input_bytes=batch.encode())
            ns.run("ip", "route", "del", "default", "table", "102")
            assert mon.expect(is_("removed", "wan2"))["reason"] == "route-removed"
            mon.command("stats")
            stats = mon.expect(lambda x: x["kind"] == "stats")
            assert stats["overruns"] >= 1
            assert stats["rescans"] >= 2  # the start-up scan and the repair
        finally:
            mon.stop()
