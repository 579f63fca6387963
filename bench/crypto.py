"""Seal+open cost of the secure channel per 1,400-byte datagram, and handshakes per second.

Run from the repository root: ``python3 -m bench.crypto [--count N]``.  Writes
``bench/results/crypto.json``.  The budget it compares against: a 500 Mbit/s tunnel carries
about 45,000 datagrams of 1,400 bytes per second each way, 22 us each; the target is that
sealing and opening together stay under a quarter of that.

Times are CPU time of this thread (``time.thread_time``): the test machine is shared by
several jobs, and CPU time is what the per-packet budget is about.  Each figure is the best
of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ratbond.crypto import ChannelConfig, ChannelMode, ClientChannel, ServerChannel

PAYLOAD_SIZE = 1400
TUNNEL_RATE = 500e6
BUDGET_US = 1e6 / (TUNNEL_RATE / (PAYLOAD_SIZE * 8))
TARGET_US = BUDGET_US / 4
PSK = bytes(range(32))
ADDR = ("192.0.2.1", 4000)
WALL = 1_800_000_000.0
RESULTS = Path(__file__).resolve().parent / "results" / "crypto.json"


def _pair(mode: ChannelMode, cipher: str) -> tuple[ClientChannel, ServerChannel]:
    config = ChannelConfig(mode, None if mode is ChannelMode.PLAINTEXT else PSK, cipher)
    client, server = ClientChannel(config), ServerChannel(config)
    _handshake(client, server)
    return client, server


def _handshake(client: ClientChannel, server: ServerChannel, addr: tuple[str, int] = ADDR
               ) -> None:
    """Initiation, response, and the first DATA that confirms the session on the server."""
    client.connect(0.0, WALL)
    initiation = client.initiation_for_path(1)
    assert initiation is not None
    server.receive_datagram(initiation, addr, 0.0, WALL)
    for reply, _ in server.datagrams_to_send():
        client.receive_datagram(reply, 0.0)
    assert server.receive_datagram(client.seal(1, b"", 0.0), addr, 0.0, WALL) is not None


def seal_open(mode: ChannelMode, cipher: str, count: int, repeat: int) -> dict[str, float]:
    """Client seals ``count`` datagrams, server opens each; the best of ``repeat`` runs (the
    machine is shared, the least disturbed run is the most faithful).  Open is the
    difference between the seal+open loop and a seal-only loop."""
    client, server = _pair(mode, cipher)
    payload = os.urandom(PAYLOAD_SIZE)
    seal, receive = client.seal, server.receive_datagram
    best_seal = best = float("inf")
    for _ in range(repeat):
        # Interleaved, as in the tunnel: each datagram is opened while still hot in the cache.
        start = time.thread_time()
        for _ in range(count):
            receive(seal(1, payload, 1.0), ADDR, 1.0, WALL)
        both = time.thread_time()
        for _ in range(count):
            seal(1, payload, 1.0)
        best = min(best, both - start)
        best_seal = min(best_seal, time.thread_time() - both)
    assert server.stats.total == 0
    best_open = best - best_seal
    per_packet_us = best / count * 1e6
    return {
        "seal_us": round(best_seal / count * 1e6, 3),
        "open_us": round(best_open / count * 1e6, 3),
        "seal_open_us": round(per_packet_us, 3),
        "datagrams_per_s": round(count / best),
        "gbit_per_s": round(count * PAYLOAD_SIZE * 8 / best / 1e9, 3),
        "fraction_of_budget": round(per_packet_us / BUDGET_US, 3),
        "meets_target": per_packet_us < TARGET_US,
    }


def raw_aead(cipher: str, count: int, repeat: int) -> float:
    """Bare AEAD encrypt+decrypt of the same size: the floor the channel adds to."""
    aead = (ChaCha20Poly1305 if cipher == "chacha20-poly1305" else AESGCM)(os.urandom(32))
    payload, nonce, header = os.urandom(PAYLOAD_SIZE), os.urandom(12), os.urandom(16)
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(count):
            aead.decrypt(nonce, aead.encrypt(nonce, payload, header), header)
        best = min(best, time.thread_time() - start)
    return round(best / count * 1e6, 3)


def handshakes_per_s(mode: ChannelMode, count: int) -> float:
    config = ChannelConfig(mode, None if mode is ChannelMode.PLAINTEXT else PSK)
    server = ServerChannel(config)
    clients = [ClientChannel(config) for _ in range(count)]
    start = time.thread_time()
    for index, client in enumerate(clients):  # distinct sources: no rate limit in the way
        _handshake(client, server, (f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", 1))
    return round(count / (time.thread_time() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="datagrams per run")
    parser.add_argument("--repeat", type=int, default=10, help="runs; the best one counts")
    parser.add_argument("--handshakes", type=int, default=500)
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "load_average_at_start": os.getloadavg()},
        "payload_bytes": PAYLOAD_SIZE,
        "budget_us_per_packet_500mbit": round(BUDGET_US, 2),
        "target_us": round(TARGET_US, 2),
        "seal_open": {},
        "raw_aead_us": {},
        "handshakes_per_s": {},
    }
    print(f"budget per {PAYLOAD_SIZE}-byte datagram at 500 Mbit/s: {BUDGET_US:.1f} us; "
          f"target for seal+open: < {TARGET_US:.1f} us")
    for cipher in ("chacha20-poly1305", "aes-256-gcm"):
        raw = raw_aead(cipher, args.count, args.repeat)
        results["raw_aead_us"][cipher] = raw  # type: ignore[index]
        print(f"  raw AEAD encrypt+decrypt {cipher:18s} {raw:6.2f} us")
        for mode in (ChannelMode.ENCRYPTED, ChannelMode.AUTHENTICATED):
            figures = seal_open(mode, cipher, args.count, args.repeat)
            results["seal_open"][f"{mode.name.lower()}/{cipher}"] = figures  # type: ignore[index]
            print(f"  {mode.name.lower():13s} {cipher:18s} {figures['seal_us']:5.2f} + "
                  f"{figures['open_us']:5.2f} = {figures['seal_open_us']:5.2f} us "
                  f"{figures['datagrams_per_s']:>9,.0f} dgram/s {figures['gbit_per_s']:5.2f} "
                  f"Gbit/s  {figures['fraction_of_budget']:.0%} of budget"
                  f"{'' if figures['meets_target'] else '  (over target)'}")
    plain = seal_open(ChannelMode.PLAINTEXT, "chacha20-poly1305", args.count, args.repeat)
    results["seal_open"]["plaintext"] = plain  # type: ignore[index]
    print(f"  plaintext (framing and replay window only)  {plain['seal_us']:5.2f} + "
          f"{plain['open_us']:5.2f} = {plain['seal_open_us']:5.2f} us")
    for mode in ChannelMode:
        rate = handshakes_per_s(mode, args.handshakes)
        results["handshakes_per_s"][mode.name.lower()] = rate  # type: ignore[index]
        print(f"  full handshakes ({mode.name.lower()}): {rate:,.0f}/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
