"""JSON payloads: the events an end publishes, encoded compactly and never raising."""

from __future__ import annotations

import json
from typing import Any

from ratbond.connection import (
    ConnectionEvent,
    PathDown,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelDown,
    TunnelUp,
)


def event_payload(event: ConnectionEvent, wall: float) -> dict[str, Any] | None:
    """The published form of ``event`` at wall-clock time ``wall``; None for events the
    fleet does not need (handshake attempts, rekeys, roaming)."""
    body: dict[str, Any]
    if isinstance(event, PathUp):
        body = {"event": "path_up", "session": f"{event.session:08x}",
                "path_id": event.path_id}
    elif isinstance(event, PathDown):
        body = {"event": "path_down", "session": f"{event.session:08x}",
                "path_id": event.path_id, "reason": event.reason}
    elif isinstance(event, SessionStarted):
        body = {"event": "session_up", "session": f"{event.session:08x}"}
        if event.addr is not None:
            body["peer"] = f"{event.addr[0]}:{event.addr[1]}"
    elif isinstance(event, SessionEnded):
        body = {"event": "session_down", "session": f"{event.session:08x}",
                "reason": event.reason}
    elif isinstance(event, TunnelUp):
        body = {"event": "tunnel_up"}
    elif isinstance(event, TunnelDown):
        body = {"event": "tunnel_down"}
    else:
        return None
    body["time"] = round(wall, 3)
    return body


def encode(data: object) -> bytes:
    """Compact JSON; anything JSON does not know becomes its ``str`` (a status model holds
    only plain values, but a dead broker is no reason to crash on an odd one)."""
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def status_payload(model: dict[str, Any], name: str, wall: float) -> dict[str, Any]:
    """The status model with who published it and when (the fleet shows "last seen")."""
    return {**model, "name": name, "published_at": round(wall, 3)}
