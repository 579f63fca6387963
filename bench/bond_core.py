"""Throughput of the sans-I/O bond core: client Bond -> server Bond, in one process.

Two bonds with two paths each, wired back to back over a lossless zero-delay "network"
(datagrams handed straight to the peer), the C KCP engine, 1,300-byte IP packets over
8 UDP flows.  Measures packets/s through send_packet -> datagrams_to_send -> receive ->
packets_received (ACKs flow back the same way) for consistent, round-robin and adaptive
scheduling, next to two bare KCP sessions moving the same bytes (the floor the bond
layer adds to).  The clock is the real monotonic clock, so KCP timers behave as in the
shell.  Writes bench/results/bond_core.json.

    python3 -m bench.bond_core [--seconds 3] [--engine c|python]
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path
from typing import Any

from ratbond import kcp
from ratbond.bond import Bond, BondConfig
from ratbond.bond.config import Balance
from ratbond.kcp import EngineName

PACKET_SIZE = 1300
FLOWS = 8
BATCH = 64
RESULTS = Path(__file__).resolve().parent / "results" / "bond_core.json"


def make_packets() -> list[bytes]:
    """One IPv4/UDP packet per flow (the scheduler only looks at the headers)."""
    packets = []
    for flow in range(FLOWS):
        payload = bytes(PACKET_SIZE - 28)
        header = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            PACKET_SIZE,
            0,
            0,
            64,
            17,
            0,
            b"\x0a\x00\x00\x01",
            b"\x0a\x00\x00\x02",
        )
        packets.append(
            header + struct.pack(">HHHH", 4000 + flow, 5201, PACKET_SIZE - 20, 0) + payload
        )
    return packets


def exchange(client: Bond, server: Bond, now: float) -> int:
    """One shell iteration for both bonds: timers, datagrams both ways; packets out."""
    for bond in (client, server):
        timer = bond.get_timer()
        if timer is not None and timer <= now:
            bond.handle_timer(now)
    receive = server.receive
    for path_id, datagram in client.datagrams_to_send():
        if not server.has_path(path_id):
            server.add_path(path_id, now)
        receive(path_id, datagram, now)
    receive = client.receive
    for path_id, datagram in server.datagrams_to_send():
        receive(path_id, datagram, now)
    return len(server.packets_received())


def run_bond(balance: Balance, engine: EngineName, seconds: float) -> dict[str, Any]:
    config = BondConfig(balance=balance, kcp_engine=engine)
    clock = time.monotonic
    client, server = Bond(config, clock()), Bond(config, clock())
    for path_id in (1, 2):
        client.add_path(path_id, clock())

    deadline = clock() + 1.0
    while client.live_paths() != [1, 2] and clock() < deadline:
        exchange(client, server, clock())
    if client.live_paths() != [1, 2]:
        raise RuntimeError("paths did not come up")

    packets = make_packets()
    send = client.send_packet
    sent = delivered = refused = 0
    start = clock()
    end = start + seconds
    now = start
    while now < end:
        for index in range(BATCH):
            if send(packets[index % FLOWS], now):
                sent += 1
            else:
                refused += 1
        delivered += exchange(client, server, clock())
        now = clock()
    while delivered < sent and clock() < end + 5.0:
        delivered += exchange(client, server, clock())
    elapsed = clock() - start
    snapshot = client.snapshot()
    return {
        "mode": balance,
        "engine": engine,
        "seconds": round(elapsed, 3),
        "packets_sent": sent,
        "packets_delivered": delivered,
        "refused_by_backpressure": refused,
        "packets_per_s": round(delivered / elapsed),
        "mbit_per_s": round(delivered * PACKET_SIZE * 8 / elapsed / 1e6, 1),
        "per_path_tx": {pid: path.tx_packets for pid, path in snapshot.paths.items()},
    }


def run_bare_kcp(engine: EngineName, seconds: float) -> dict[str, Any]:
    """Two KCP sessions, same tuning, same loop: what the bond layer is compared with."""
    clock = time.monotonic
    to_server: list[bytes] = []
    to_client: list[bytes] = []
    sender = kcp.create(1, to_server.append, engine)
    receiver = kcp.create(1, to_client.append, engine)
    for session in (sender, receiver):
        session.nodelay(1, 10, 2, 1)
        session.wndsize(1024, 1024)
        session.setmtu(1400)
        session.update(int(clock() * 1000))
    message = b"\x01\x00\x00\x00\x00" + make_packets()[0]
    sent = delivered = 0
    start = clock()
    end = start + seconds
    now = start
    while now < end or delivered < sent:
        now_ms = int(now * 1000)
        for _ in range(BATCH):
            if now < end and sender.waitsnd() < 2048:
                sender.send(message)
                sent += 1
        sender.update(now_ms)
        sender.flush()
        for datagram in to_server:
            receiver.input(datagram)
        to_server.clear()
        while receiver.recv() is not None:
            delivered += 1
        receiver.update(now_ms)
        receiver.flush()
        for datagram in to_client:
            sender.input(datagram)
        to_client.clear()
        now = clock()
        if now > end + 5.0:
            break
    elapsed = clock() - start
    return {
        "mode": "bare_kcp",
        "engine": engine,
        "seconds": round(elapsed, 3),
        "packets_sent": sent,
        "packets_delivered": delivered,
        "packets_per_s": round(delivered / elapsed),
        "mbit_per_s": round(delivered * PACKET_SIZE * 8 / elapsed / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--engine", choices=["c", "python"], default="c")
    args = parser.parse_args()
    engine: EngineName = args.engine
    results = [
        run_bare_kcp(engine, args.seconds),
        run_bond("consistent", engine, args.seconds),
        run_bond("roundrobin", engine, args.seconds),
        run_bond("adaptive", engine, args.seconds),
    ]
    print(f"bond core, {PACKET_SIZE}-byte packets, {FLOWS} flows, 2 paths, engine {engine}")
    for result in results:
        print(
            f"  {result['mode']:<11} {result['packets_per_s']:>8} packets/s "
            f"{result['mbit_per_s']:>7} Mbit/s  delivered {result['packets_delivered']}"
            f"/{result['packets_sent']}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"packet_size": PACKET_SIZE, "results": results}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
