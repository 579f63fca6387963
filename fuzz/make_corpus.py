"""Build the seed corpora under ``fuzz/corpus/<harness>/`` from real datagrams.

    sudo python3 -m fuzz.make_corpus            # capture a lab tunnel, then write the seeds
    python3 -m fuzz.make_corpus --no-capture    # only the seeds made in process (no root)

The capture runs a two-link lab tunnel twice (plaintext, then ``--aes``), with ``tcpdump``
on the server's uplink while a ping, an IPv6 ping, UDP datagrams and a hashed TCP transfer
cross it; its UDP payloads are the real datagrams.  From them come the seeds of every
harness: whole datagrams (wire, handshake, transport), the KCP bytes inside plaintext DATA
(kcp), the bond messages inside KCP segments (bond), the IP packets inside DATA messages
(flow).  The handshake and transport harnesses also get genuine datagrams made in process
under their own key and clock, so the fuzzer starts from inputs that authenticate there
(a captured one is sealed with the lab's key), and the config harness gets the example
files.  The corpus stays small (a few dozen files per harness, well under 500 KB in all).
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
SEP = b"\xff\x00"
PER_HARNESS = 24
KCP_HEADER = struct.Struct("<IBBHIIII")


# --------------------------------------------------------------------------- capture


def capture(workdir: Path) -> dict[str, list[bytes]]:
    """UDP payloads seen on the server's uplink, per channel mode, from a live lab tunnel."""
    from tests.e2e.tunnel_util import send_udp, tcp_upload

    from ratbond.lab.bonded import SERVER_PORT, SERVER_TUNNEL_IP, SERVER_TUNNEL_IP6, BondedTunnel
    from ratbond.lab.netns import stop_process
    from ratbond.lab.spec import LinkSpec
    from ratbond.lab.topology import Lab

    direct = LinkSpec(None, None, direct=True)
    modes = {"plaintext": [], "aes": ["--aes", "--secret=fuzz corpus capture"]}
    found: dict[str, list[bytes]] = {}
    for mode, args in modes.items():
        lab = Lab.up([direct, direct])
        tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip, server_args=args,
                              client_args=args, log_dir=workdir)
        pcap = workdir / f"{mode}.pcap"
        dump = lab.server.popen("tcpdump", "-n", "-U", "-s", "0", "-i", "srv0", "-w", str(pcap),
                                f"udp port {SERVER_PORT}", stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # tcpdump has no readiness signal with -w; the handshake must be in
            tunnel.start(paths=2)
            lab.client.run("ping", "-c", "3", "-i", "0.2", "-s", "1200", SERVER_TUNNEL_IP,
                           check=False)
            lab.client.run("ping", "-c", "3", "-i", "0.2", SERVER_TUNNEL_IP6, check=False)
            send_udp(lab.client, SERVER_TUNNEL_IP, 40999, "fuzz corpus canary")
            sent, got = tcp_upload(tunnel, SERVER_TUNNEL_IP, 5201, 256 * 1024, "corpus")
            assert sent["sha256"] == got["sha256"], (sent, got)
            time.sleep(0.5)
        finally:
            tunnel.stop()
            time.sleep(0.5)
            stop_process(dump)
            lab.down()
        found[mode] = list(read_pcap(pcap.read_bytes()))
        print(f"{mode}: {len(found[mode])} datagrams captured", file=sys.stderr)
    return found


def read_pcap(data: bytes) -> Iterator[bytes]:
    """UDP payloads of IPv4 frames in a classic pcap file (Ethernet or Linux cooked)."""
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_header = {1: 14, 113: 16}[linktype]
    offset = 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16: offset + 16 + caplen]
        offset += 16 + caplen
        packet = frame[link_header:]
        if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
            continue
        ihl = (packet[0] & 0x0F) * 4
        yield packet[ihl + 8:]


# --------------------------------------------------------------------------- derivation


def kcp_segments(data: bytes) -> Iterator[tuple[tuple[int, ...], bytes]]:
    offset = 0
    while len(data) - offset >= KCP_HEADER.size:
        fields = KCP_HEADER.unpack_from(data, offset)
        offset += KCP_HEADER.size
        yield fields, data[offset: offset + fields[7]]
        offset += fields[7]


def with_conv(data: bytes, conv: int) -> bytes:
    """The KCP datagram ``data`` with every segment's conversation id set to ``conv``."""
    out = bytearray()
    for fields, body in kcp_segments(data):
        out += KCP_HEADER.pack(conv, *fields[1:]) + body
    return bytes(out)


def diverse(items: Iterable[bytes], limit: int = PER_HARNESS) -> list[bytes]:
    """Up to ``limit`` distinct items, preferring distinct (type byte, size bucket)."""
    unique = list(dict.fromkeys(items))
    seen: set[tuple[bytes, int]] = set()
    first: list[bytes] = []
    rest: list[bytes] = []
    for item in unique:
        shape = (item[:2], len(item) // 64)
        (rest if shape in seen else first).append(item)
        seen.add(shape)
    return (first + rest)[:limit]


def from_capture(found: dict[str, list[bytes]]) -> dict[str, list[bytes]]:
    from fuzz import fuzz_kcp
    from ratbond import wire
    from ratbond.bond import messages

    plain = found.get("plaintext", [])
    secure = found.get("aes", [])
    every = plain + secure
    secure_set = set(secure)
    kcp_bytes = [d[wire.HEADER_SIZE:] for d in plain
                 if len(d) > wire.HEADER_SIZE and d[1] == wire.MsgType.DATA]
    bond_messages = [body for d in kcp_bytes for fields, body in kcp_segments(d)
                     if fields[1] == 81 and fields[2] == 0 and body]
    packets = [m[messages.DATA_HEADER.size:] for m in bond_messages
               if m[0] in (messages.DATA, messages.EXPRESS)]
    handshakes = [d for d in every if len(d) > 1 and d[1] != wire.MsgType.DATA]
    seeds: dict[str, list[bytes]] = {
        "wire": diverse(every),
        "kcp": diverse(with_conv(d, fuzz_kcp.CONV) for d in kcp_bytes),
        "kcp_c": diverse(with_conv(d, fuzz_kcp.CONV) for d in kcp_bytes),
        "flow": diverse(packets),
        # bond: byte 0 odd = messages carried by the peer's KCP; even = raw KCP datagrams
        "bond": diverse([b"\x01" + SEP.join(bond_messages[i:i + 3])
                         for i in range(0, len(bond_messages), 3)], PER_HARNESS // 2)
        + diverse([b"\x00" + d for d in kcp_bytes], PER_HARNESS // 2),
        # handshake: byte 0 picks the settings (0 plaintext, 1 encrypted ChaCha20)
        "handshake": diverse([b"\x00" + d for d in plain if d[1:2] != b"\x03"]
                             + [b"\x01" + d for d in handshakes if d in secure_set]),
        # transport: world 3 is plaintext (bit 3 re-heads onto the live session)
        "transport": diverse([bytes([3 | 8]) + d[8:] for d in plain if d[1:2] == b"\x03"],
                             PER_HARNESS // 2)
        + diverse([bytes([0 | 8]) + d[8:] for d in secure if d[1:2] == b"\x03"],
                  PER_HARNESS // 2),
    }
    return seeds


def in_process() -> dict[str, list[bytes]]:
    """Genuine handshakes under the harness's key and clock, DATA shaped like a live
    session's, and the example configs."""
    from fuzz import fuzz_handshake, fuzz_transport

    seeds: dict[str, list[bytes]] = {"handshake": [], "transport": [], "config": []}
    for index, config in enumerate(fuzz_handshake.CONFIGS):
        _, client = fuzz_handshake.channels(config)
        init = client.initiation_for_path(1)
        assert init is not None
        seeds["handshake"].append(bytes([index]) + init)
    for index, channel in enumerate(fuzz_transport.CHANNELS):
        # Another seed: sealed under keys the harness's world does not have, so a seed
        # is shaped like live traffic but forged there (as a captured one is).
        world = fuzz_transport.World(channel, seed=99)
        world.client.send_packet(fuzz_transport.PROBE, world.now)
        for _, datagram in world.client.datagrams_to_send(world.now):
            seeds["transport"].append(bytes([index]) + datagram)
            seeds["transport"].append(bytes([index | 8]) + datagram[8:])
    examples = sorted((ROOT.parent / "examples").glob("*.toml"))
    for path in examples:
        text = path.read_bytes()
        role = 2 if "clients" in path.name else (0 if "server" in path.name else 1)
        seeds["config"].append(bytes([role]) + text)
    seeds["config"] += [b"\x00listen-addr = \"[::]:12345\"\naes = true\nsecret = \"s\"\n",
                        b"\x01connect-addr = \"192.0.2.1:1\"\nmux = 2\nwan = [\"wan*\"]\n",
                        b"\x02[[client]]\nname = \"a\"\ntunnel-id = 661\n"
                        b"tunnel-ip = \"10.10.11.0/30\"\nsecret = \"k\"\n"]
    return seeds


def write(seeds: dict[str, list[bytes]], *, clear: bool) -> None:
    """Store the seeds, one file each named by its hash (``clear``: replace the old ones)."""
    for harness, items in seeds.items():
        folder = CORPUS / harness
        folder.mkdir(parents=True, exist_ok=True)
        if clear:
            for old in folder.iterdir():
                old.unlink()
        for item in items:
            name = hashlib.sha1(item).hexdigest()[:16]
            (folder / name).write_bytes(item)
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    files = sum(1 for p in CORPUS.rglob("*") if p.is_file())
    print(f"corpus: {files} files, {total} bytes", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-capture", action="store_true",
                        help="skip the lab capture (no root needed)")
    args = parser.parse_args(argv)
    seeds: dict[str, list[bytes]] = {}
    if not args.no_capture:
        with tempfile.TemporaryDirectory(prefix="ratbond-corpus-") as workdir:
            seeds = from_capture(capture(Path(workdir)))
    for harness, items in in_process().items():
        seeds.setdefault(harness, []).extend(items)
    write(seeds, clear=not args.no_capture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
