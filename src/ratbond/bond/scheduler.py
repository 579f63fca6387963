"""Which path carries the next packet.

* :class:`ConsistentScheduler` -- weighted rendezvous (highest random weight) hashing of
  the flow key onto the live paths.  Every (flow, path) pair gets a pseudo-random score
  scaled by the path's weight and the flow takes the best path, so a flow stays on its
  path while that path lives, and a path joining or leaving moves only the flows it wins
  or held (the minimum any scheme can move).  Scores are computed once per flow and
  cached until the set of paths changes.
* :class:`AdaptiveScheduler` -- the ``adaptive``, ``roundrobin`` and ``redundant``
  balances: each packet takes the path expected to deliver it first, everything the path
  holds (queued and in flight) at its capacity estimate plus half its minimum RTT.
  Plain rotation hands a slow link as many packets as a fast one, so consecutive
  packets arrive far apart and the receiver's reorder buffer holds the fast paths'
  packets behind the slow one's; earliest delivery shares packets in proportion to the
  rates, keeps light traffic on the shortest path, and lets packets arrive nearly in
  order.  A path without room, or whose arrival would overshoot the reorder budget, is
  passed over; ``adaptive`` sends small packets on the lowest-RTT path with room.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Final, Generic, Protocol, TypeVar

#: Cached flow decisions before the cache is dropped and rebuilt (bounds memory when
#: many short flows pass: a miss only costs one score per path).
FLOW_CACHE_LIMIT: Final = 65536
_TWO_64: Final = float(1 << 64)


def hrw_score(key: bytes, path_id: int, weight: float) -> float:
    """Weighted rendezvous score: larger wins; ``weight`` scales the share of flows.

    ``-weight / ln(u)`` with ``u`` uniform in (0, 1) from a keyed hash gives each path a
    share of flows proportional to its weight.
    """
    digest = hashlib.blake2b(key, digest_size=8, salt=path_id.to_bytes(2, "big")).digest()
    uniform = (int.from_bytes(digest, "big") + 0.5) / _TWO_64
    return -weight / math.log(uniform)


class ConsistentScheduler:
    """Flow-sticky path choice by weighted rendezvous hashing."""

    __slots__ = ("_cache", "_weights")

    def __init__(self) -> None:
        self._weights: dict[int, float] = {}
        self._cache: dict[bytes, int] = {}

    def set_paths(self, weights: Mapping[int, float]) -> None:
        """Replace the live paths (path id -> weight > 0); flows are re-placed lazily."""
        for path_id, weight in weights.items():
            if not weight > 0.0 or math.isinf(weight):
                raise ValueError(f"path {path_id}: weight must be finite and > 0, got {weight}")
        self._weights = dict(weights)
        self._cache.clear()

    def reweigh(self, weights: Mapping[int, float]) -> None:
        """New weights for the same paths: flows already placed stay where they are
        (moving a flow between paths reorders it); new flows follow the new weights."""
        if set(weights) != set(self._weights):
            self.set_paths(weights)
            return
        for path_id, weight in weights.items():
            if not weight > 0.0 or math.isinf(weight):
                raise ValueError(f"path {path_id}: weight must be finite and > 0, got {weight}")
        self._weights = dict(weights)

    def pick(self, key: bytes) -> int | None:
        """The path for flow ``key``, or None when no path is live."""
        path_id = self._cache.get(key)
        if path_id is not None:
            return path_id
        best: int | None = None
        best_score = -1.0
        for candidate, weight in self._weights.items():
            score = hrw_score(key, candidate, weight)
            if score > best_score:
                best, best_score = candidate, score
        if best is not None:
            if len(self._cache) >= FLOW_CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = best
        return best


class Lane(Protocol):
    """What :class:`AdaptiveScheduler` reads of a path (all kept current by it)."""

    limit: int
    seconds_per_segment: float
    half_rtt: float

    def waitsnd(self) -> int:
        """Segments the lane holds: in flight plus waiting to leave."""
        ...

    def unsent(self) -> int:
        """Segments waiting to leave, not sent yet."""
        ...


LaneT = TypeVar("LaneT", bound=Lane)


#: Segments small packets may queue beyond a lane's bound (see pick_fastest).
SMALL_HEADROOM: Final = 64

#: Expected deliveries this close (seconds) are a tie: the lanes take turns.  KCP measures
#: RTTs in whole milliseconds, so the half RTTs of equal links differ by about this much.
TIE_SECONDS: Final = 0.0005


class AdaptiveScheduler(Generic[LaneT]):
    """The ``adaptive`` balance: per packet, the path where it is expected to arrive first.

    A lane's expected arrival is everything it holds (queued and in flight) at its
    estimated rate, plus half its minimum RTT.  Estimates do not collapse when a path is
    lightly used (see :mod:`ratbond.bond.rate`), so counting the whole queue starves
    nothing.  Each packet goes where it arrives first, so packets leave in ``seq`` order
    and arrive nearly so.  A lane with room whose arrival would come more than
    :attr:`budget` seconds (the receiver's reorder hold) after that of a full lane gets
    nothing, and neither does a second copy (``redundant``, ``duplicate``) that would
    come that much after the first.  Small packets take the lowest-RTT lane with room
    (:meth:`pick_fastest`).  Ties within :data:`TIE_SECONDS` take turns.
    """

    __slots__ = ("_lanes", "_turn", "budget")

    def __init__(self) -> None:
        self._lanes: tuple[LaneT, ...] = ()
        self._turn = 0
        self.budget = math.inf

    def set_paths(self, lanes: Iterable[LaneT]) -> None:
        """Replace the lanes (live paths that may carry DATA)."""
        self._lanes = tuple(lanes)
        self._turn = 0

    @property
    def lanes(self) -> tuple[LaneT, ...]:
        return self._lanes

    def pick(self) -> LaneT | None:
        """The lane with room whose next packet would arrive first, else None.

        None too when that arrival comes more than :attr:`budget` after the earliest
        arrival of any lane, full ones included: the fast lanes are full and the packet
        would wait at the receiver for everything they hold (head-of-line blocking); a
        drop tells the flow to slow down instead.
        """
        lanes = self._lanes
        count = len(lanes)
        if not count:
            return None
        start = self._turn % count
        self._turn = start + 1
        best: LaneT | None = None
        best_due = floor = math.inf
        for index in range(start, start + count):
            lane = lanes[index % count]
            queued = lane.waitsnd()
            due = lane.half_rtt + (queued + 1) * lane.seconds_per_segment
            if due < floor:  # noqa: PLR1730 - min() costs a call per packet
                floor = due
            if queued >= lane.limit:
                continue
            if due < best_due - TIE_SECONDS:
                best, best_due = lane, due
        if best is not None and best_due > floor + self.budget and self._too_late(best):
            return None
        return best

    def _too_late(self, lane: LaneT) -> bool:
        """Would a packet on ``lane`` reach the peer more than :attr:`budget` after one on
        the lane where it would arrive first?  Judged by what still waits to leave each
        lane: segments already in flight do not delay a new one (pacing sends at the
        rate whatever is in flight), and counting them -- as lane choice does, to share
        the load by what each lane holds -- would charge a long lane its whole RTT and
        drop packets that would in fact arrive early."""
        def arrival(candidate: LaneT) -> float:
            return candidate.half_rtt + (candidate.unsent() + 1) * candidate.seconds_per_segment
        first = min(arrival(other) for other in self._lanes)
        return arrival(lane) > first + self.budget

    def pick_any(self, *, exclude: LaneT | None = None) -> LaneT | None:
        """The lane where a packet arrives first, full or not (for DATA sent again)."""
        best: LaneT | None = None
        best_due = math.inf
        for lane in self._lanes:
            if lane is exclude:
                continue
            due = lane.half_rtt + (lane.waitsnd() + 1) * lane.seconds_per_segment
            if due < best_due:
                best, best_due = lane, due
        return best

    def pick_other(self, first: LaneT) -> LaneT | None:
        """The best lane with room for a second copy of a packet queued on ``first``,
        unless it would arrive more than :attr:`budget` after the first copy (the
        receiver would have handed that one out long before: the copy only loads the
        link)."""
        first_due = first.half_rtt + first.waitsnd() * first.seconds_per_segment
        best: LaneT | None = None
        best_due = math.inf
        for lane in self._lanes:
            if lane is first:
                continue
            queued = lane.waitsnd()
            if queued >= lane.limit:
                continue
            due = lane.half_rtt + (queued + 1) * lane.seconds_per_segment
            if due < best_due:
                best, best_due = lane, due
        if best is not None and best_due > first_due + self.budget:
            return None
        return best

    def pick_fastest(self, *, exclude: LaneT | None = None) -> LaneT | None:
        """The lowest-RTT lane with room for small, latency-sensitive packets.

        Room for them goes :data:`SMALL_HEADROOM` segments past the queue bound: a bulk
        flow keeps the queues at the bound, and dropping its ACKs, DNS or pings with it
        would hurt every other flow (they are small and few).
        """
        best: LaneT | None = None
        best_rtt = math.inf
        for lane in self._lanes:
            if lane is exclude or lane.waitsnd() >= lane.limit + SMALL_HEADROOM:
                continue
            if lane.half_rtt < best_rtt:
                best, best_rtt = lane, lane.half_rtt
        return best
