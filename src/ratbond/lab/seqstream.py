"""A sequence-numbered UDP stream across the lab: what arrived, what was lost, what twice.

Failover is judged by what a real-time application sees: a steady stream (50 datagrams a
second, like VoIP or a game) from several source ports (so a per-flow scheduler spreads it
over several paths) must arrive complete and without duplicates while links die. Run
inside namespaces::

    python3 -m ratbond.lab.seqstream recv BIND PORT SECONDS
        prints READY once bound, then after SECONDS of silence or end of the stream one
        JSON line: every sequence number received, in arrival order, and each arrival's
        one-way delay in ms (the namespaces of one machine share its wall clock)
    python3 -m ratbond.lab.seqstream send HOST PORT SECONDS [--pps 50] [--ports 8]
        prints one JSON line: how many were sent

:class:`SeqStream` runs a receiver and a sender between two namespaces; :func:`tally`
(pure) turns what was sent and received into lost, duplicated and reordered counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ratbond.lab.netns import Namespace, stop_process

MAGIC = b"RBSQ"
_HEADER = struct.Struct("!4sId")  # magic, sequence number, sender's wall clock
PAYLOAD_BYTES = 160               # a voice frame's size: a small packet, as real time sends
END_SEQ = 0xFFFFFFFF              # "the stream is over" marker, repeated a few times
END_COPIES = 5
LINGER_S = 2.0                    # the receiver waits this long after the end for stragglers


# ----- pure: judging a stream ----------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """What a receiver saw of ``sent`` datagrams numbered 0..sent-1."""

    sent: int
    received: int        # datagrams that arrived (duplicates included)
    lost: int            # numbers that never arrived
    duplicates: int      # arrivals beyond the first of a number
    reordered: int       # arrivals with a number below one already seen
    foreign: int         # numbers outside 0..sent-1
    first_lost: tuple[int, ...]  # the first few lost numbers, to show where

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "received": self.received, "lost": self.lost,
                "duplicates": self.duplicates, "reordered": self.reordered,
                "foreign": self.foreign, "first_lost": list(self.first_lost)}


def tally(sent: int, arrivals: Sequence[int], *, show: int = 10) -> Tally:
    """Lost, duplicated and reordered datagrams of a stream of ``sent`` numbered ones."""
    seen: set[int] = set()
    duplicates = reordered = foreign = 0
    highest = -1
    for seq in arrivals:
        if not 0 <= seq < sent:
            foreign += 1
            continue
        if seq in seen:
            duplicates += 1
            continue
        seen.add(seq)
        if seq < highest:
            reordered += 1
        highest = max(highest, seq)
    lost = [seq for seq in range(sent) if seq not in seen]
    return Tally(sent=sent, received=len(arrivals), lost=len(lost), duplicates=duplicates,
                 reordered=reordered, foreign=foreign, first_lost=tuple(lost[:show]))


def encode(seq: int, sent_at: float) -> bytes:
    header = _HEADER.pack(MAGIC, seq, sent_at)
    return header + bytes(max(0, PAYLOAD_BYTES - len(header)))


def decode(datagram: bytes) -> int | None:
    """The sequence number of one of our datagrams; None for anything else."""
    stamped = decode_stamped(datagram)
    return None if stamped is None else stamped[0]


def decode_stamped(datagram: bytes) -> tuple[int, float] | None:
    """Sequence number and the sender's wall clock; None for anything else."""
    if len(datagram) < _HEADER.size:
        return None
    magic, seq, sent_at = _HEADER.unpack_from(datagram)
    return (int(seq), float(sent_at)) if magic == MAGIC else None


def first_delays(arrivals: Sequence[int], delays_ms: Sequence[float]) -> list[float]:
    """One-way delays of the first arrival of each number (a later copy is not what the
    application waited for)."""
    seen: set[int] = set()
    out = []
    for seq, delay in zip(arrivals, delays_ms, strict=True):
        if seq not in seen:
            seen.add(seq)
            out.append(delay)
    return out


# ----- the two ends (run inside namespaces) ------------------------------------------------


def _say_ready() -> None:
    print("READY", flush=True)


def receive(bind: str, port: int, seconds: float,
            on_ready: Callable[[], None] = _say_ready,
            delays_ms: list[float] | None = None) -> list[int]:
    """Sequence numbers in arrival order, until the end marker (+ linger) or ``seconds``.

    ``on_ready`` runs once the socket is bound (by default: ``READY`` on stdout); each
    arrival's one-way delay (ms) is appended to ``delays_ms`` when given.
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((bind, port))
        on_ready()
        arrivals: list[int] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                break
            stamped = decode_stamped(data)
            if stamped is None:
                continue
            seq, sent_at = stamped
            if seq == END_SEQ:
                deadline = min(deadline, time.monotonic() + LINGER_S)
                continue
            arrivals.append(seq)
            if delays_ms is not None:
                delays_ms.append(round((time.time() - sent_at) * 1000.0, 3))
    return arrivals


def _send_one(sock: socket.socket, datagram: bytes, to: tuple[str, int]) -> None:
    """Send, or lose the datagram while there is no route (the tunnel is being restarted):
    the receiver counts it as lost, as an application would see it."""
    with contextlib.suppress(OSError):
        sock.sendto(datagram, to)


def send(host: str, port: int, seconds: float, pps: float, ports: int) -> int:
    """``pps`` datagrams a second for ``seconds``, turn by turn from ``ports`` sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(ports)]
    try:
        count = round(seconds * pps)
        start = time.monotonic()
        for seq in range(count):
            wait = start + seq / pps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            _send_one(socks[seq % ports], encode(seq, time.time()), (host, port))
        for _ in range(END_COPIES):
            _send_one(socks[0], encode(END_SEQ, time.time()), (host, port))
            time.sleep(0.05)
        return count
    finally:
        for sock in socks:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m ratbond.lab.seqstream")
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("recv")
    r.add_argument("bind")
    r.add_argument("port", type=int)
    r.add_argument("seconds", type=float)
    s = sub.add_parser("send")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("seconds", type=float)
    s.add_argument("--pps", type=float, default=50.0)
    s.add_argument("--ports", type=int, default=8)
    args = p.parse_args(argv)
    if args.mode == "recv":
        delays: list[float] = []
        arrivals = receive(args.bind, args.port, args.seconds, delays_ms=delays)
        print(json.dumps({"arrivals": arrivals, "delays_ms": delays}), flush=True)
    else:
        print(json.dumps({"sent": send(args.host, args.port, args.seconds, args.pps,
                                       args.ports)}), flush=True)
    return 0


# ----- driving it from outside ---------------------------------------------------------------


class SeqStreamError(RuntimeError):
    """The stream's sender or receiver failed."""


@dataclass
class SeqStream:
    """One stream from ``sender_ns`` to ``receiver_ns`` (address ``receiver_ip``).

    :meth:`start` returns once the receiver is bound and the sender runs; :meth:`finish`
    waits for both and returns the :class:`Tally`.
    """

    sender_ns: Namespace
    receiver_ns: Namespace
    receiver_ip: str
    port: int
    seconds: float
    pps: float = 50.0
    ports: int = 8
    started_at: float = 0.0  # time.monotonic() just before the sender started: number k
    #                          left about started_at + k / pps (+ the sender's start-up)
    #: after finish(): the one-way delay (ms) of each number's first arrival
    delays_ms: list[float] = field(default_factory=list)
    _receiver: subprocess.Popen[bytes] | None = None
    _sender: subprocess.Popen[bytes] | None = None

    def start(self) -> SeqStream:
        module = [sys.executable, "-m", "ratbond.lab.seqstream"]
        self._receiver = self.receiver_ns.popen(
            *module, "recv", self.receiver_ip, str(self.port), str(self.seconds + 20),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._receiver.stdout is not None
        line = self._receiver.stdout.readline()
        if line.strip() != b"READY":
            self.stop()
            raise SeqStreamError(f"stream receiver did not start: {line!r}")
        self.started_at = time.monotonic()
        self._sender = self.sender_ns.popen(
            *module, "send", self.receiver_ip, str(self.port), str(self.seconds),
            "--pps", str(self.pps), "--ports", str(self.ports),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def finish(self, *, show: int = 10) -> Tally:
        """Wait for both ends; ``show`` = how many lost numbers to list in the tally."""
        if self._sender is None or self._receiver is None:
            raise SeqStreamError("the stream was not started")
        try:
            sent = _json_result(self._sender, self.seconds + 15)["sent"]
            received = _json_result(self._receiver, LINGER_S + 25)
        finally:
            self.stop()
        arrivals = [int(a) for a in received["arrivals"]]
        self.delays_ms = first_delays(arrivals, [float(d) for d in received["delays_ms"]])
        return tally(int(sent), arrivals, show=show)

    def stop(self) -> None:
        for proc in (self._sender, self._receiver):
            if proc is not None:
                stop_process(proc)

    def __enter__(self) -> SeqStream:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _json_result(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise SeqStreamError("stream endpoint did not finish in time") from None
    try:
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SeqStreamError(f"stream endpoint failed (rc {proc.returncode}): "
                             f"{err.decode(errors='replace').strip()[-300:]}") from None
    return result


if __name__ == "__main__":
    sys.exit(main())
