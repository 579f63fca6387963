"""Frozen snapshots of a bond's counters, for the status endpoint and the logs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ratbond.bond.reorder import ReorderStats


@dataclass(frozen=True, slots=True)
class PathSnapshot:
    """One path at snapshot time; packet counters count DATA (IP packets) only."""

    path_id: int
    state: str  # "up" or "down"
    epoch: int
    srtt_ms: int
    rto_ms: int
    hello_rtt_ms: int | None
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    peer_rx_packets: int
    retransmits: int
    inflight: int
    waitsnd: int
    queue_limit: int  # current bound on waitsnd (segments)
    rate_pps: float  # measured delivery rate (segments/s)
    restarts: int
    last_heard_ago_s: float | None
    down_reason: str | None
    path_state: str = "probing"  # PathState value: probing, up, parked, closed
    capacity_bps: int = 0  # capacity estimate (full-size segments), kept while idle
    tx_rate_bps: int = 0  # DATA sent recently (falls to 0 when idle)
    rx_rate_bps: int = 0  # DATA received recently (falls to 0 when idle)
    min_rtt_ms: float = 0.0
    loss: float = 0.0  # fraction of segments sent again, smoothed
    rate_phase: str = "startup"  # RatePhase value
    window: int = 0  # segments allowed in flight
    backup: bool = False  # carries DATA only while no primary path is up


@dataclass(frozen=True, slots=True)
class BondSnapshot:
    """The whole bond: paths by id, drops by reason, reorder counters, packet totals."""

    balance: str
    paths: Mapping[int, PathSnapshot]
    live_paths: tuple[int, ...]
    packets_in: int  # accepted by send_packet
    bytes_in: int
    packets_out: int  # handed out by packets_received
    drops: Mapping[str, int]
    reorder: ReorderStats
    peer_sprays: bool
    closed: bool
    duplicates: int = 0  # copies of an already delivered seq dropped (all modes)
    copies_sent: int = 0  # second copies sent (redundant balance, duplicate option)
    resent: int = 0  # DATA sent again after its path died
    hedged: int = 0  # DATA sent again on another path while its own held it back


#: BondSnapshot counters the runtimes publish in status (as ``bond_<name>``).
BOND_COUNTERS: tuple[str, ...] = ("copies_sent", "duplicates", "resent", "hedged")
