"""Attacker's tools for the lab, run inside a namespace (bounded in count and time).

    python3 udp_tools.py capture IFACE PORT COUNT SECONDS OUTFILE
        record the UDP payloads of up to COUNT packets to PORT seen on IFACE
    python3 udp_tools.py replay INFILE HOST PORT SOURCES MODE
        send every recorded payload to HOST:PORT from each source address in SOURCES
        (comma separated); MODE is ``exact`` (replay), ``flip`` (one bit flipped per copy)
        or ``junk`` (random bytes of the same length, and truncated headers)

Prints a JSON line with what it did.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003  # outgoing frames reach only ETH_P_ALL taps


def capture(iface: str, port: int, count: int, seconds: float, outfile: str) -> dict[str, int]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((iface, ETH_P_ALL))
    sock.settimeout(0.2)
    payloads: list[bytes] = []
    deadline = time.monotonic() + seconds
    print("READY", flush=True)
    while len(payloads) < count and time.monotonic() < deadline:
        try:
            packet, link = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if link[1] != ETH_P_IP or len(packet) < 28 or packet[9] != socket.IPPROTO_UDP:
            continue
        ihl = (packet[0] & 0x0F) * 4
        dport = struct.unpack_from("!H", packet, ihl + 2)[0]
        if dport == port:
            payloads.append(packet[ihl + 8:])
    with open(outfile, "wb") as handle:
        for payload in payloads:
            handle.write(struct.pack("!H", len(payload)) + payload)
    return {"captured": len(payloads)}


def load(infile: str) -> list[bytes]:
    with open(infile, "rb") as handle:
        data = handle.read()
    out, offset = [], 0
    while offset + 2 <= len(data):
        (length,) = struct.unpack_from("!H", data, offset)
        out.append(data[offset + 2: offset + 2 + length])
        offset += 2 + length
    return out


def replay(infile: str, host: str, port: int, sources: list[str], mode: str) -> dict[str, int]:
    rng = random.Random(1234)
    payloads = load(infile)
    sent = 0
    for source in sources:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        for payload in payloads:
            if mode == "exact":
                datagram = payload
            elif mode == "flip":
                bit = rng.randrange(len(payload) * 8)
                flipped = bytearray(payload)
                flipped[bit // 8] ^= 1 << (bit % 8)
                datagram = bytes(flipped)
            else:
                datagram = os.urandom(rng.choice([1, 5, 15, 16, 17, len(payload)]))
            try:
                sock.sendto(datagram, (host, port))
                sent += 1
            except BlockingIOError:
                pass
            if sent % 200 == 0:
                time.sleep(0.01)  # a flood, but one the test machine's buffers can take
        sock.close()
    return {"sent": sent, "payloads": len(payloads)}


def main(argv: list[str]) -> int:
    if argv[0] == "capture":
        result = capture(argv[1], int(argv[2]), int(argv[3]), float(argv[4]), argv[5])
    elif argv[0] == "replay":
        result = replay(argv[1], argv[2], int(argv[3]), argv[4].split(","), argv[5])
    else:
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
