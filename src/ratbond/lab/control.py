"""Client side of an emulator's control socket (protocol in :mod:`ratbond.lab.emulator`).

The socket is a filesystem path, so a process in any namespace (the CLI in the host's,
a test) reaches an emulator running inside its own namespace.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any


class EmulatorControlError(RuntimeError):
    """The emulator could not be reached or refused the request."""


def request(path: str, message: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    """Send one request and return the reply; raises when the emulator says ``ok: false``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise EmulatorControlError(f"emulator at {path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise EmulatorControlError(f"emulator at {path}: unreadable reply {data!r}") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise EmulatorControlError(f"emulator at {path}: {error}")
    return reply


def wait_ready(path: str, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> None:
    """Poll until the emulator answers ``ping``; ``alive()`` False stops the wait early."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            request(path, {"cmd": "ping"}, timeout=0.5)
            return
        except EmulatorControlError as exc:
            if alive is not None and not alive():
                raise EmulatorControlError(f"emulator for {path} exited during start") from exc
            if time.monotonic() > deadline:
                raise EmulatorControlError(f"emulator at {path} not ready after {timeout}s: "
                                           f"{exc}") from None
        time.sleep(0.02)
