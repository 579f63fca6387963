"""Settings of one bond (per client session), validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Balance = Literal["consistent", "roundrobin", "adaptive", "redundant"]
Duplicate = Literal["none", "small", "ef"]
EngineChoice = Literal["auto", "python", "c"]


@dataclass(frozen=True, slots=True)
class LinkRate:
    """A link's rates in bit/s, a hint that caps and seeds a path's estimate (0 = unknown).

    ``send_bps`` is what this end can send over the link, ``receive_bps`` what it can
    receive: the peer learns it (HELLO) and uses it as its own send cap on the path.
    """

    send_bps: float
    receive_bps: float

    def __post_init__(self) -> None:
        for name in ("send_bps", "receive_bps"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and value >= 0 and math.isfinite(value)):
                raise ValueError(f"LinkRate.{name}={value!r}: must be a finite number >= 0")


@dataclass(frozen=True)
class BondConfig:
    """How a :class:`~ratbond.bond.Bond` schedules, probes and tunes its paths.

    ``dead_after`` is the original's 10 s; issue 6 discusses a faster default once
    measurements show it is safe (the HELLO RTT gives the needed margin).
    Backpressure bounds each path's KCP send queue (``waitsnd``: in flight plus waiting)
    twice over.  ``send_queue_limit`` is the hard cap in segments; None means two send
    windows (one in flight, one waiting), so the link never runs dry between acks.
    ``send_queue_delay`` turns the cap into a time: one pipe (capacity estimate times
    minimum RTT) plus the estimate times one minimum RTT (at least 20 ms, at most this
    delay), so under load a path holds about one RTT of queue and a slow link fills up
    (and is skipped, or pushes back on its flows) instead of building seconds of queue.
    None keeps the fixed cap only.
    ``adaptive_window`` paces each path and caps its segments in flight (KCP's send
    window, which otherwise stays at ``snd_wnd`` and, KCP having no congestion control,
    overflows the WAN's buffer) from its capacity estimate; see
    :mod:`ratbond.bond.rate`.
    ``balance``: ``consistent`` hashes flows onto paths weighted by their capacity
    estimates; ``roundrobin`` and ``adaptive`` spray each packet onto the path where it
    arrives first (``adaptive`` also sends small, latency-sensitive packets on the
    lowest-RTT path, unheld by the peer's reorder buffer); ``redundant`` sends every
    packet on the two best paths (a copy that would arrive later than the reorder hold
    after the first is not sent).  ``duplicate`` adds a second
    copy of small (``small``) or DSCP EF/CS5 (``ef``) packets on another path.
    ``resend_on_death`` sends what a dying path may not have delivered again over the
    survivors (the receiver drops duplicates by ``seq``).
    ``kcp_nodelay`` is KCP's fast mode: minimum RTO 30 ms instead of 100 ms and a
    gentler backoff.  Off by default: with a tunnel's queueing and its shells' scheduling
    jitter an RTO that close to the RTT fires spuriously (measured: a quarter of all
    segments sent twice); fast resend (two later ACKs) still repairs real losses early.
    """

    balance: Balance = "adaptive"
    hello_interval: float = 2.0
    dead_after: float = 10.0
    kcp_engine: EngineChoice = "auto"
    kcp_mtu: int = 1400
    kcp_interval_ms: int = 10
    kcp_nodelay: bool = False
    snd_wnd: int = 1024
    rcv_wnd: int = 1024
    reorder_timeout: float | None = None  # None = adaptive from the paths' RTTs
    kcp_dead_link: int = 20
    send_queue_limit: int | None = None
    send_queue_delay: float | None = 0.2
    adaptive_window: bool = True
    reorder_max_packets: int = 8192
    reorder_max_bytes: int = 8 << 20
    duplicate: Duplicate = "none"
    resend_on_death: bool = True

    def __post_init__(self) -> None:
        _choice("balance", self.balance, ("consistent", "roundrobin", "adaptive", "redundant"))
        _choice("duplicate", self.duplicate, ("none", "small", "ef"))
        _choice("kcp_engine", self.kcp_engine, ("auto", "python", "c"))
        _seconds("hello_interval", self.hello_interval, "a number of seconds > 0")
        _seconds("dead_after", self.dead_after, "a number of seconds > 0")
        if self.dead_after <= self.hello_interval:
            raise ValueError(
                f"BondConfig.dead_after={self.dead_after!r}: must be greater than "
                f"hello_interval ({self.hello_interval!r}) or idle paths die between HELLOs"
            )
        _integer("kcp_mtu", self.kcp_mtu, 128, 65535)
        _integer("kcp_interval_ms", self.kcp_interval_ms, 1, 5000)
        _integer("snd_wnd", self.snd_wnd, 1, 65535)
        _integer("rcv_wnd", self.rcv_wnd, 1, 65535)
        _integer("kcp_dead_link", self.kcp_dead_link, 1, 1000)
        _integer("reorder_max_packets", self.reorder_max_packets, 1, 1 << 20)
        _integer("reorder_max_bytes", self.reorder_max_bytes, 1, 1 << 31)
        if self.send_queue_limit is not None:
            _integer("send_queue_limit", self.send_queue_limit, 1, 1 << 20)
        if self.send_queue_delay is not None:
            _seconds("send_queue_delay", self.send_queue_delay, "None or seconds in (0, 10]")
            if self.send_queue_delay > 10.0:
                _fail("send_queue_delay", self.send_queue_delay, "None or seconds in (0, 10]")
        if self.reorder_timeout is not None:
            value = self.reorder_timeout
            if isinstance(value, bool) or not isinstance(value, int | float):
                _fail("reorder_timeout", value, "None (adaptive) or seconds in [0, 60]")
            if not 0.0 <= value <= 60.0:
                _fail("reorder_timeout", value, "None (adaptive) or seconds in [0, 60]")

    @property
    def queue_limit(self) -> int:
        """Hard per-path send queue cap in KCP segments (see the class docstring)."""
        return self.send_queue_limit if self.send_queue_limit is not None else 2 * self.snd_wnd


def _fail(name: str, value: object, allowed: str) -> None:
    raise ValueError(f"BondConfig.{name}={value!r}: must be {allowed}")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(name, value, "one of " + ", ".join(allowed))


def _seconds(name: str, value: object, allowed: str) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and value > 0 and math.isfinite(value)):  # type: ignore[operator,arg-type]
        _fail(name, value, allowed)


def _integer(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(name, value, f"an integer in [{low}, {high}]")
