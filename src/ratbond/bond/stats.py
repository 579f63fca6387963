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
