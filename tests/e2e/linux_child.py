"""Code the Linux platform e2e tests run *inside* a namespace (``ip netns exec``).

The pytest process stays in the host namespace; each function here is started with
:func:`run_in` / :func:`start_in` and reports through JSON lines on stdout.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ratbond.lab.netns import Namespace

IP_PKTINFO = 8  # not exported by the socket module
REPO = Path(__file__).resolve().parents[2]


def child_argv(func: str, *args: str) -> list[str]:
    code = f"import sys; from tests.e2e.linux_child import {func}; {func}(*sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


def run_in(ns: Namespace, func: str, *args: str, timeout: float = 30.0) -> dict[str, Any]:
    """Run ``func(*args)`` inside ``ns``; returns the JSON object on its last stdout line."""
    proc = subprocess.run(ns.exec_argv(*child_argv(func, *args)), cwd=REPO, capture_output=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{func} failed: {proc.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# -- WAN monitor --------------------------------------------------------------------------


def _wan_json(wan: Any) -> dict[str, Any]:
    return {"name": wan.name, "address": str(wan.address), "table": wan.table,
            "family": int(wan.family)}


def monitor(debounce: str = "0.05", seconds: str = "60", rcvbuf: str = str(4 << 20)) -> None:
    """Print the start-up WANs, then every WanTable event, until stdin closes or time ends.

    stdin commands: ``pause S`` (stop reading netlink for S seconds), ``stats``.
    """
    from ratbond.linux.netlink import WanMonitor
    from ratbond.linux.wan import WanAdded, WanAddressChanged, WanRemoved, WanTable

    table = WanTable(debounce=float(debounce), ignore_devices=["rbtun*"])
    mon = WanMonitor(table, rcvbuf=int(rcvbuf))
    mon.open()
    mon.rescan(time.monotonic())
    while table.next_event() is not None:
        pass
    emit({"kind": "scan", "wans": [_wan_json(w) for w in table.wans()]})
    end = time.monotonic() + float(seconds)
    while (now := time.monotonic()) < end:
        timer = table.get_timer()
        wait = max(0.0, min(end, timer if timer is not None else end) - now)
        ready, _, _ = select.select([mon.fileno(), sys.stdin], [], [], wait)
        if sys.stdin in ready:
            command = sys.stdin.readline().split()
            if not command:
                break
            if command[0] == "pause":
                emit({"kind": "paused"})
                time.sleep(float(command[1]))
            elif command[0] == "stats":
                emit({"kind": "stats", "overruns": mon.overruns, "rescans": mon.rescans})
        now = time.monotonic()
        if mon.fileno() in ready:
            mon.drain(now)
        table.handle_timer(now)
        while (event := table.next_event()) is not None:
            if isinstance(event, WanAdded):
                emit({"kind": "added", **_wan_json(event.wan)})
            elif isinstance(event, WanRemoved):
                emit({"kind": "removed", "reason": event.reason.value, **_wan_json(event.wan)})
            elif isinstance(event, WanAddressChanged):
                emit({"kind": "address", "old": str(event.old.address),
                      **_wan_json(event.new)})
    mon.close()


# -- TUN ----------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _udp_echo(packet: bytes) -> bytes | None:
    """The reply to an IPv4 UDP datagram: addresses and ports swapped, payload reversed."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:ihl])
    header[12:16], header[16:20] = packet[16:20], packet[12:16]
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", _checksum(bytes(header)))
    udp = packet[ihl:]
    # Ports swapped; checksum 0 means "none" in IPv4 UDP.
    return bytes(header) + udp[2:4] + udp[0:2] + udp[4:6] + b"\0\0" + udp[:7:-1]


def tun_check() -> None:
    """Open and configure a TUN, answer one ping through it, close it; report what we saw."""
    from ratbond.linux.tun import TunDevice

    result: dict[str, Any] = {}
    with TunDevice.open("rbtun%d", mtu=1380) as tun:
        result["name"] = tun.name
        for _ in range(2):  # configure is idempotent
            tun.configure(address=ipaddress.IPv4Interface("10.99.0.1/30"),
                          address6=ipaddress.IPv6Interface("fd00:99::1/64"))
        show = json.loads(subprocess.run(["ip", "-j", "addr", "show", "dev", tun.name],
                                         capture_output=True, check=True).stdout)[0]
        result["mtu"] = show["mtu"]
        result["up"] = "UP" in show["flags"]
        result["addrs"] = sorted(f"{a['local']}/{a['prefixlen']}" for a in show["addr_info"])
        while tun.read_batch():  # the kernel's own IPv6 chatter (RS, MLD) after up
            pass
        result["empty_read"] = tun.read_batch()  # returns at once: the fd is non-blocking
        # A datagram routed into the TUN is read from the fd; our reply written to the fd
        # reaches the sender: both directions through the device.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.settimeout(3.0)
            peer.sendto(b"hello", ("10.99.0.2", 9999))
            answered = False
            deadline = time.monotonic() + 3.0
            while not answered and time.monotonic() < deadline:
                select.select([tun.fd], [], [], 0.2)
                for packet in tun.read_batch():
                    reply = _udp_echo(packet)
                    if reply is not None:
                        answered = tun.write(reply)
            result["answered"] = answered
            data, src = peer.recvfrom(100)
            result["echo"] = [data.decode(), src[0], src[1]]
        result["bad_write"] = tun.write(b"\x00not-ip")  # neither IPv4 nor IPv6: EINVAL
        result["write_errors"] = tun.write_errors
    try:
        socket.if_nametoindex(result["name"])
        result["gone"] = False
    except OSError:
        result["gone"] = True
    emit(result)


# -- path sockets -------------------------------------------------------------------------


def udp_sink(port: str, seconds: str) -> None:
    """Print the ingress interface of every datagram to ``port`` for ``seconds``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", int(port)))
    emit({"kind": "ready"})
    end = time.monotonic() + float(seconds)
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        data, ancillary, _flags, addr = sock.recvmsg(2048, 256)
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                ifindex = struct.unpack("I", value[:4])[0]
                emit({"kind": "datagram", "data": data.decode(), "src": addr[0],
                      "dev": socket.if_indextoname(ifindex)})


def path_send(local: str, device: str, dest: str, port: str, tag: str) -> None:
    """Send three datagrams from a path socket; report send errors instead of raising."""
    from ratbond.linux.sockets import open_path_socket

    sock = open_path_socket(ipaddress.ip_address(local), device)
    errors = []
    for _ in range(3):
        try:
            sock.sendto(tag.encode(), (dest, int(port)))
        except OSError as exc:
            errors.append(exc.errno)
    bound = sock.getsockname()[0]
    dev = sock.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0").decode()
    sock.close()
    emit({"errors": errors, "bound": bound, "device": dev})


# -- routes -------------------------------------------------------------------------------


def _defaults(table: int) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "route", "show", "table", str(table), "default"],
                         capture_output=True, check=True).stdout
    return list(json.loads(out or b"[]"))


def route_manager(device: str, gateway: str, table: str) -> None:
    """Add twice, remove twice, and report the table after each step."""
    from ratbond.linux.netlink import Rtnl
    from ratbond.linux.routes import DefaultRouteManager, RouteConflictError

    steps: dict[str, Any] = {}
    with Rtnl() as rtnl:
        mgr = DefaultRouteManager(rtnl, device=device, gateway=gateway, table=int(table))
        for step in ("add1", "add2"):
            mgr.ensure_present()
            steps[step] = _defaults(int(table))
        for step in ("del1", "del2"):
            mgr.ensure_absent()
            steps[step] = _defaults(int(table))
        # Somebody else's default: it stays, and two /1 routes take the traffic instead.
        subprocess.run(["ip", "route", "add", "default", "dev", "lo", "table", table],
                       check=True)
        steps["mode"] = mgr.ensure_present()
        steps["present"] = mgr.present
        steps["after_conflict"] = _defaults(int(table))
        steps["split"] = _table(int(table))
        mgr.ensure_absent()
        steps["after_removal"] = _table(int(table))
        # A /1 route of somebody else's too: nothing can be installed, and it says so.
        subprocess.run(["ip", "route", "add", "0.0.0.0/1", "dev", "lo", "table", table],
                       check=True)
        try:
            mgr.ensure_present()
            steps["conflict"] = None
        except RouteConflictError as exc:
            steps["conflict"] = str(exc)
    emit(steps)


def _table(table: int) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", "route", "show", "table", str(table)],
                         capture_output=True, check=True).stdout
    return list(json.loads(out or b"[]"))
