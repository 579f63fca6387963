"""What one connection needs to know: the secure channel's mode, the bond's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ratbond.bond import BondConfig
from ratbond.crypto import DEFAULT_LIMITS, ChannelConfig, Limits

#: The client suspects the server lost its session (a restart) after this many HELLO
#: intervals without one authenticated datagram on any path: HELLOs flow on every path
#: every interval, so three missing in a row on all of them is no longer bad luck.
SILENCE_HELLOS: Final = 3
#: ... but never sooner than this (seconds): a very short hello interval would otherwise
#: start handshakes over a merely congested link.
MIN_SILENCE: Final = 1.0
#: The server forgets a client session nothing was heard from for this many ``dead_after``
#: periods: every path of it is long dead, and the client, if alive, makes a new one.
REAP_DEAD_AFTERS: Final = 3


@dataclass(frozen=True)
class ConnectionConfig:
    """Settings of one end: channel (mode, secret, cipher), bond, and channel limits."""

    channel: ChannelConfig
    bond: BondConfig
    limits: Limits = DEFAULT_LIMITS

    @property
    def silence_limit(self) -> float:
        """Seconds without authenticated data after which the client re-handshakes."""
        return max(SILENCE_HELLOS * self.bond.hello_interval, MIN_SILENCE)

    @property
    def reap_after(self) -> float:
        """Seconds of silence after which the server closes a client session."""
        return REAP_DEAD_AFTERS * self.bond.dead_after
