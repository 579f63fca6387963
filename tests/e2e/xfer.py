"""Traffic endpoints run inside lab namespaces; they print what they moved as JSON.

    python3 xfer.py tcp-recv  HOST PORT                 # accept one connection, hash all bytes
    python3 xfer.py tcp-send  HOST PORT BYTES SEED [RATE]  # send BYTES pseudo-random bytes,
                                                        # paced to RATE bytes/s if given
    python3 xfer.py tcp-serve HOST PORT BYTES SEED [RATE]  # accept one connection and send
                                                        # to it (paced like tcp-send)
    python3 xfer.py tcp-fetch HOST PORT                 # connect and hash all bytes received
    python3 xfer.py udp-recv  HOST PORT COUNT TIMEOUT   # check each datagram's own digest
    python3 xfer.py udp-send  HOST PORT COUNT SIZE

Data is a deterministic stream (SHA-256 in counter mode over SEED) so sender and receiver can
be compared by digest alone; a receiver prints ``{"bytes": n, "sha256": ...}`` and a sender the
same for what it sent.  ``READY`` on stdout means a listener is bound.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from collections.abc import Iterator

CHUNK = 64 * 1024


def stream(total: int, seed: str) -> Iterator[bytes]:
    block = 0
    sent = 0
    while sent < total:
        buf = bytearray()
        while len(buf) < CHUNK:
            buf += hashlib.sha256(f"{seed}:{block}".encode()).digest() * 64
            block += 1
        piece = bytes(buf[: min(CHUNK, total - sent)])
        sent += len(piece)
        yield piece


def listen(host: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1)
    print("READY", flush=True)
    return sock


def connect(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + 20
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(60)
        try:
            sock.connect((host, port))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def send_all(sock: socket.socket, total: int, seed: str, rate: float = 0.0) -> dict[str, object]:
    digest = hashlib.sha256()
    count = 0
    start = time.monotonic()
    for piece in stream(total, seed):
        sock.sendall(piece)
        digest.update(piece)
        count += len(piece)
        if rate:
            ahead = count / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the peer to close: everything was delivered
    return {"bytes": count, "sha256": digest.hexdigest()}


def recv_all(sock: socket.socket) -> dict[str, object]:
    digest = hashlib.sha256()
    count = 0
    while data := sock.recv(CHUNK):
        digest.update(data)
        count += len(data)
    return {"bytes": count, "sha256": digest.hexdigest()}


def main(argv: list[str]) -> int:
    mode, host, port = argv[0], argv[1], int(argv[2])
    started = time.monotonic()
    result: dict[str, object]
    if mode == "tcp-recv":
        server = listen(host, port, socket.SOCK_STREAM)
        conn, _ = server.accept()
        conn.settimeout(120)
        result = recv_all(conn)
        conn.close()
    elif mode == "tcp-send":
        rate = float(argv[5]) if len(argv) > 5 else 0.0
        result = send_all(connect(host, port), int(argv[3]), argv[4], rate)
    elif mode == "tcp-serve":
        server = listen(host, port, socket.SOCK_STREAM)
        conn, _ = server.accept()
        conn.settimeout(120)
        result = send_all(conn, int(argv[3]), argv[4], float(argv[5]) if len(argv) > 5 else 0.0)
    elif mode == "tcp-fetch":
        result = recv_all(connect(host, port))
    elif mode == "udp-recv":
        sock = listen(host, port, socket.SOCK_DGRAM)
        count, timeout = int(argv[3]), float(argv[4])
        sock.settimeout(timeout)
        good = bad = 0
        seen: set[int] = set()
        try:
            while good + bad < count:
                data = sock.recv(65535)
                index, digest, body = int.from_bytes(data[:4], "big"), data[4:36], data[36:]
                if hashlib.sha256(data[:4] + body).digest() == digest and index not in seen:
                    good += 1
                    seen.add(index)
                else:
                    bad += 1
        except TimeoutError:
            pass
        result = {"good": good, "bad": bad}
    elif mode == "udp-send":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        count, size = int(argv[3]), int(argv[4])
        for index in range(count):
            head = index.to_bytes(4, "big")
            body = hashlib.sha256(head).digest() * (size // 32 + 1)
            body = body[: max(0, size - 36)]
            sock.sendto(head + hashlib.sha256(head + body).digest() + body, (host, port))
            time.sleep(0.002)  # paced: this checks integrity, not the kernel's queue sizes
        result = {"sent": count}
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    result["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
