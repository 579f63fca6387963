"""The link emulator process: a userspace bump in the wire between two veths.

Runs inside its own namespace (``python3 -m ratbond.lab.emulator --client-if e1a
--isp-if e1b --control PATH ...``). Frames read from the client side with an AF_PACKET
socket go "up" through one :class:`~ratbond.lab.shaper.Direction`, frames from the ISP
side go "down" through the other; each leaves on the opposite veth when it is due.
The kernel has no netem/tbf here, which is why this exists (docs/design.md, "The lab").

Runtime control: a unix stream socket at ``--control``; one JSON object per connection,
one JSON reply (see :mod:`ratbond.lab.control`)::

    {"cmd": "ping"}                              -> {"ok": true}
    {"cmd": "get"}                               -> {"ok": true, "down": {...}, "up": {...}}
    {"cmd": "counters"}                          -> {"ok": true, "down": {...}, "up": {...}}
    {"cmd": "set", "down": {...}, "up": {...}}   -> like "get", after the change

``set`` takes any :class:`~ratbond.lab.shaper.DirectionParams` field per direction.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

from ratbond.lab.shaper import Direction, DirectionParams

ETH_P_ALL = 0x0003
SOL_PACKET = 263  # not exported by the socket module on every build
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20; the pkttype check below covers older kernels
SOCKET_BUFFER = 8 * 1024 * 1024
MAX_FRAME = 65536
CONTROL_TIMEOUT = 1.0
_PARAM_FIELDS = {f.name: f.type for f in fields(DirectionParams)}


class ControlError(ValueError):
    """A control request was malformed; becomes an error reply, never a crash."""


def open_packet_socket(ifname: str) -> socket.socket:
    """A non-blocking AF_PACKET socket bound to ``ifname`` that ignores its own output."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # *BUFFORCE as root
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


def parse_params(data: object, base: DirectionParams) -> DirectionParams:
    """Validate a JSON mapping of DirectionParams fields onto ``base``."""
    if not isinstance(data, dict):
        raise ControlError("direction settings must be an object")
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _PARAM_FIELDS:
            raise ControlError(f"unknown field {key!r}; allowed: {sorted(_PARAM_FIELDS)}")
        if key == "blackhole":
            if not isinstance(value, bool):
                raise ControlError("blackhole must be true or false")
        elif key == "rate_mbit" and value is None:
            pass
        elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ControlError(f"{key} must be a number >= 0")
        changes[key] = value
    params = base.with_changes(**changes)
    if params.rate_mbit is not None and params.rate_mbit <= 0:
        raise ControlError("rate_mbit must be > 0 or null (unlimited)")
    if params.loss > 1 or params.queue_ms <= 0:
        raise ControlError("loss must be within 0..1 and queue_ms > 0")
    return params


class Emulator:
    """The event loop: drain both packet sockets, release due frames, answer control."""

    def __init__(self, client_if: str, isp_if: str, control_path: str, *,
                 up: DirectionParams, down: DirectionParams, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self.up = Direction(up, rng)
        self.down = Direction(down, rng)
        self.tx_errors = 0
        self.client_sock = open_packet_socket(client_if)
        self.isp_sock = open_packet_socket(isp_if)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control_path)
        self.control_path = control_path
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(control_path)
        self.control.listen(8)
        self.control.setblocking(False)
        self.running = True

    def close(self) -> None:
        for sock in (self.client_sock, self.isp_sock, self.control):
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)

    def run(self) -> None:
        poller = select.epoll()
        # Which direction a readable socket feeds, and where that direction's output goes.
        routes = {self.client_sock.fileno(): (self.client_sock, self.up),
                  self.isp_sock.fileno(): (self.isp_sock, self.down)}
        for fd in routes:
            poller.register(fd, select.EPOLLIN)
        poller.register(self.control.fileno(), select.EPOLLIN)
        control_fd = self.control.fileno()
        monotonic = time.monotonic
        try:
            while self.running:
                now = monotonic()
                self._release(now)
                due = [d for d in (self.up.next_due(), self.down.next_due()) if d is not None]
                timeout = max(0.0, min(due) - monotonic()) if due else 1.0
                for fd, _mask in poller.poll(timeout):
                    if fd == control_fd:
                        self._serve_control()
                    else:
                        sock, direction = routes[fd]
                        self._drain(sock, direction)
        finally:
            poller.close()

    def _drain(self, sock: socket.socket, direction: Direction) -> None:
        """Read until EAGAIN so one wakeup handles a whole burst."""
        recvfrom, offer, now = sock.recvfrom, direction.offer, time.monotonic()
        while True:
            try:
                frame, addr = recvfrom(MAX_FRAME)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:
                    return
                raise
            if addr[2] != PACKET_OUTGOING:
                offer(frame, now)

    def _release(self, now: float) -> None:
        for direction, sock in ((self.up, self.isp_sock), (self.down, self.client_sock)):
            frames = direction.pop_due(now)
            send = sock.send
            for frame in frames:
                try:
                    send(frame)
                except OSError:  # ENOBUFS/EAGAIN/ENETDOWN: the wire refused it, as a NIC would
                    self.tx_errors += 1

    def _serve_control(self) -> None:
        while True:
            try:
                conn, _ = self.control.accept()
            except BlockingIOError:
                return
            with conn:
                conn.settimeout(CONTROL_TIMEOUT)
                with contextlib.suppress(OSError):
                    request = _read_message(conn)
                    conn.sendall(json.dumps(self.handle(request)).encode() + b"\n")

    def handle(self, request: bytes) -> dict[str, Any]:
        """Answer one control request; bad input becomes ``{"ok": false, "error": ...}``."""
        try:
            message = json.loads(request)
            if not isinstance(message, dict):
                raise ControlError("request must be a JSON object")
            cmd = message.get("cmd")
            if cmd == "ping":
                return {"ok": True, "pid": os.getpid()}
            if cmd == "counters":
                return {"ok": True, "up": self._counters(self.up),
                        "down": self._counters(self.down), "tx_errors": self.tx_errors}
            if cmd == "set":
                now = time.monotonic()
                new_up = parse_params(message.get("up", {}), self.up.params)
                new_down = parse_params(message.get("down", {}), self.down.params)
                self.up.configure(new_up, now)
                self.down.configure(new_down, now)
            elif cmd != "get":
                raise ControlError(f"unknown cmd {cmd!r}; allowed: ping, get, set, counters")
            return {"ok": True, "up": asdict(self.up.params), "down": asdict(self.down.params)}
        except (ControlError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}

    @staticmethod
    def _counters(direction: Direction) -> dict[str, int]:
        return {**direction.counters.as_dict(), "in_flight": direction.in_flight}


def _read_message(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


def _rate(text: str) -> float | None:
    return None if text in ("", "none", "*") else float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m ratbond.lab.emulator",
                                description="Userspace WAN link emulator between two veths.")
    p.add_argument("--client-if", required=True, help="veth towards the client (up = from it)")
    p.add_argument("--isp-if", required=True, help="veth towards the ISP (down = from it)")
    p.add_argument("--control", required=True, help="path of the unix control socket")
    p.add_argument("--down-mbit", type=_rate, default=None, help="'*' = unlimited")
    p.add_argument("--up-mbit", type=_rate, default=None, help="'*' = unlimited")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="fraction 0..1")
    p.add_argument("--queue-ms", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common = {"delay_ms": args.delay_ms, "jitter_ms": args.jitter_ms, "loss": args.loss,
              "queue_ms": args.queue_ms}
    emulator = Emulator(args.client_if, args.isp_if, args.control,
                        up=DirectionParams(rate_mbit=args.up_mbit, **common),
                        down=DirectionParams(rate_mbit=args.down_mbit, **common),
                        seed=args.seed)

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)  # unwinds out of epoll at once; ``finally`` removes the socket

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        emulator.run()
    finally:
        emulator.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
