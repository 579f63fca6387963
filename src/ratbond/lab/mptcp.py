"""The single-connection reference: one kernel MPTCP connection over every lab link.

What a bond should approach for one TCP flow is what the kernel's MPTCP (the base of
OpenMPTCProuter) gets over the same links. iperf3 before 3.16 has no ``--mptcp``, so this
module is its own tiny sender and receiver, run inside namespaces::

    python3 -m ratbond.lab.mptcp serve BIND PORT sink|source SECONDS
    python3 -m ratbond.lab.mptcp connect HOST PORT sink|source SECONDS --bind SRC

``sink`` receives and counts, ``source`` sends zeros for SECONDS. The receiving end prints
``{"bits_per_second", "bytes", "seconds"}``; the client end adds ``subflows``, the most
subflows the kernel reported (``MPTCP_INFO``) while the data moved, so a figure that came
over fewer links than the lab has shows as such.

:func:`enable` sets the path manager up in a lab (one ``subflow`` endpoint per WAN
address in the client, limits on both ends); :func:`measure` runs one transfer.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from typing import Any

from ratbond.lab.netns import Namespace, stop_process

IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
SOL_MPTCP = 284
MPTCP_INFO = 1
CHUNK = 64 * 1024
SUBFLOW_LIMIT = 8


class MptcpError(RuntimeError):
    """The kernel has no MPTCP, or a transfer failed."""


def subflows(sock: socket.socket) -> int | None:
    """Subflows of an MPTCP socket right now, the first one included (``struct
    mptcp_info`` starts with the count of the *additional* subflows)."""
    try:
        info = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 32)
    except OSError:
        return None
    return info[0] + 1 if info else None


def _sink(sock: socket.socket) -> dict[str, Any]:
    total = 0
    first = last = time.monotonic()
    most = 0
    checked = 0.0
    while data := sock.recv(CHUNK):
        now = time.monotonic()
        if total == 0:
            first = now
        total += len(data)
        last = now
        if now - checked > 0.25:
            most = max(most, subflows(sock) or 0)
            checked = now
    seconds = max(last - first, 1e-6)
    return {"bytes": total, "seconds": round(seconds, 3),
            "bits_per_second": total * 8 / seconds, "subflows": most}


def _source(sock: socket.socket, seconds: float) -> dict[str, Any]:
    block = bytes(CHUNK)
    sent = 0
    most = 0
    end = time.monotonic() + seconds
    checked = 0.0
    while (now := time.monotonic()) < end:
        sent += sock.send(block)
        if now - checked > 0.25:
            most = max(most, subflows(sock) or 0)
            checked = now
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # the peer closes once it has everything
    return {"sent_bytes": sent, "subflows": most}


def serve(bind: str, port: int, mode: str, seconds: float) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((bind, port))
        listener.listen(1)
        listener.settimeout(30)
        print("READY", flush=True)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(seconds + 30)
            return _sink(conn) if mode == "sink" else _source(conn, seconds)


def connect(host: str, port: int, mode: str, seconds: float, bind: str) -> dict[str, Any]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP) as sock:
        sock.bind((bind, 0))
        sock.settimeout(seconds + 30)
        sock.connect((host, port))
        return _sink(sock) if mode == "sink" else _source(sock, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ratbond.lab.mptcp")
    p.add_argument("role", choices=("serve", "connect"))
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("mode", choices=("sink", "source"))
    p.add_argument("seconds", type=float)
    p.add_argument("--bind", default="0.0.0.0")
    args = p.parse_args(argv)
    if args.role == "serve":
        result = serve(args.host, args.port, args.mode, args.seconds)
    else:
        result = connect(args.host, args.port, args.mode, args.seconds, args.bind)
    print(json.dumps(result), flush=True)
    return 0


# ----- driving it in a lab -------------------------------------------------------------------


def enable(client: Namespace, server: Namespace, wan_addresses: dict[str, str]) -> None:
    """Limits on both ends and one ``subflow`` endpoint per WAN (device -> address)."""
    for ns in (client, server):
        if ns.run("sysctl", "-n", "net.mptcp.enabled", check=False).stdout.strip() != b"1":
            raise MptcpError(f"MPTCP is not enabled in {ns.name} (net.mptcp.enabled)")
        ns.run("ip", "mptcp", "limits", "set", "subflows", str(SUBFLOW_LIMIT),
               "add_addr_accepted", str(SUBFLOW_LIMIT))
    for dev, address in wan_addresses.items():
        client.run("ip", "mptcp", "endpoint", "add", address, "dev", dev, "subflow")


def measure(client: Namespace, server: Namespace, server_ip: str, port: int, *,
            seconds: float, reverse: bool, bind: str) -> dict[str, Any]:
    """One connection from ``client`` (source address ``bind``); ``reverse`` = download.

    Returns the receiver's ``bits_per_second`` and the client's ``subflows``.
    """
    module = [sys.executable, "-m", "ratbond.lab.mptcp"]
    server_mode, client_mode = ("source", "sink") if reverse else ("sink", "source")
    listener = server.popen(*module, "serve", server_ip, str(port), server_mode, str(seconds),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert listener.stdout is not None
        line = listener.stdout.readline()
        if line.strip() != b"READY":
            raise MptcpError(f"MPTCP listener did not start: {line!r}")
        near = client.run(*module, "connect", server_ip, str(port), client_mode, str(seconds),
                          "--bind", bind, timeout=seconds + 40, check=False)
        far_out, far_err = listener.communicate(timeout=30)
    finally:
        stop_process(listener)
    try:
        near_result = json.loads(near.stdout.decode().strip().splitlines()[-1])
        far_result = json.loads(far_out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise MptcpError("MPTCP transfer failed: "
                         f"{near.stderr.decode(errors='replace').strip()[-300:]} "
                         f"{far_err.decode(errors='replace').strip()[-300:]}") from None
    receiver = near_result if reverse else far_result
    return {"bits_per_second": float(receiver["bits_per_second"]),
            "subflows": int(near_result.get("subflows", 0))}


if __name__ == "__main__":
    sys.exit(main())
