"""Status views of a running ratbond: dashboard, text, JSON model, Prometheus metrics.

The runtime hands :class:`StatusServer` a function returning a plain snapshot dict; this
package only samples and renders it, so what any view shows is what the cores counted.
Snapshot shape (every key optional, unknown keys ignored; ``docs/status.md`` lists them)::

    {"role": "client", "version": "...", "uptime_s": 12.3, "session": "0000abcd" | None,
     "server": "host:port", "balance": "consistent",
     "channel": {"mode": "encrypted", "cipher": "chacha20-poly1305", "rekeys": 3},
     "tunnel": {"device": "tun660", "address": "10.10.10.1/30", "mtu": 1391, ...},
     "counters": {"tun_rx_packets": 5, ...},          # monotonically increasing
     "drops": {"auth_failed": 0, ...},                 # by reason
     "reorder": {"held": 0, "late": 2, ...},
     "paths": [{"path_id": 1, "wan": "wan1", "state": "up", "since_s": 5.0, "down_reason": None,
                "local": "...", "remote": "...", "srtt_ms": 41, "tx_bytes": 10, ...}],
     "sessions": [{"session": "0000abcd", "client": "...", "age_s": 3.0, "active": True}]}

Endpoints: ``/`` (dashboard), ``/status`` (text), ``/status.json`` (the versioned model) and
``/status.schema.json`` (its JSON Schema), ``/history.json`` (per-path rate and RTT series),
``/metrics`` (Prometheus).
"""

from ratbond.status.model import SCHEMA_VERSION, StatusModel, build_model, from_dict, to_dict
from ratbond.status.server import Response, StatusServer, TokenError, load_token
from ratbond.status.text import render_text

__all__ = [
    "SCHEMA_VERSION",
    "Response",
    "StatusModel",
    "StatusServer",
    "TokenError",
    "build_model",
    "from_dict",
    "load_token",
    "render_text",
    "to_dict",
]
