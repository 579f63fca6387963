"""ICMP echo RTT probe, run inside a namespace (``python3 -m ratbond.lab.probe``).

The lab cannot count on ``ping`` being installed, and it needs the numbers, not text to
scrape: this prints one JSON object ``{"sent", "received", "loss", "rtt_ms": [...]}``, with
one ``rtt_ms`` entry per probe in sending order (``null`` when no reply came).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply for ``ident`` in a raw IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:ihl + 8]
    if len(icmp) < 8:
        return None
    kind, _code, _csum, rid, seq = struct.unpack("!BBHHH", icmp)
    if kind != ICMP_ECHO_REPLY or rid != ident:
        return None
    return int(seq)


def probe(dest: str, count: int, interval: float, timeout: float,
          source: str | None = None) -> dict[str, object]:
    """Send ``count`` echoes ``interval`` apart; wait up to ``timeout`` after the last."""
    ident = (os.getpid() ^ int(time.time() * 1000)) & 0xFFFF
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        if source:
            sock.bind((source, 0))
        next_send = time.monotonic()
        seq = 0
        deadline = None
        while True:
            now = time.monotonic()
            if seq < count and now >= next_send:
                seq += 1
                sent_at[seq] = time.monotonic()
                with contextlib.suppress(OSError):  # no route, link down: the probe is lost
                    sock.sendto(echo_request(ident, seq, b"ratbond-lab-probe" * 3), (dest, 0))
                next_send += interval
                if seq == count:
                    deadline = sent_at[seq] + timeout
            if deadline is not None and (now >= deadline or len(rtts) == count):
                break
            wake = next_send if seq < count else (deadline or now)
            readable, _, _ = select.select([sock], [], [], max(0.0, wake - time.monotonic()))
            if readable:
                packet = sock.recv(65535)
                got = time.monotonic()
                reply = parse_reply(packet, ident)
                if reply in sent_at and reply not in rtts:
                    rtts[reply] = (got - sent_at[reply]) * 1000
    per_probe = [rtts.get(seq) for seq in range(1, count + 1)]
    return {"sent": count, "received": len(rtts), "loss": 1 - len(rtts) / count,
            "rtt_ms": per_probe}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ratbond.lab.probe")
    p.add_argument("dest")
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--source", default=None)
    args = p.parse_args(argv)
    result = probe(args.dest, args.count, args.interval, args.timeout, args.source)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
