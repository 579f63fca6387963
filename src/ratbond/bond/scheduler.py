"""Which path carries the next packet.

* :class:`ConsistentScheduler` -- weighted rendezvous (highest random weight) hashing of
  the flow key onto the live paths.  Every (flow, path) pair gets a pseudo-random score
  scaled by the path's weight and the flow takes the best path, so a flow stays on its
  path while that path lives, and a path joining or leaving moves only the flows it wins
  or held (the minimum any scheme can move).  Scores are computed once per flow and
  cached until the set of paths changes.
* :class:`EarliestDeliveryScheduler` -- the ``roundrobin`` balance: each packet takes
  the path expected to deliver it first: half the path's minimum RTT, plus, when the
  path's in-flight window is full, the queue beyond the window at the path's measured
  rate.  (A packet that fits in the window leaves at once whatever the rate estimate
  says: counting the whole queue at the rate would starve a path whose rate was only
  ever measured under light load, and its estimate could then never grow.)  Plain
  rotation hands a slow link as many packets as a fast one, so consecutive packets
  arrive far apart and the receiver's reorder buffer holds the fast paths' packets
  behind the slow one's; earliest delivery shares packets in proportion to the rates,
  keeps light traffic on the shortest path, and lets packets arrive nearly in order.
  A path without room is passed over.
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
    """What :class:`EarliestDeliveryScheduler` reads of a path (all kept current by it)."""

    limit: int
    window: int
    seconds_per_segment: float
    half_rtt: float

    def waitsnd(self) -> int: ...


LaneT = TypeVar("LaneT", bound=Lane)


#: Expected deliveries this close (seconds) are a tie: the lanes take turns.  KCP measures
#: RTTs in whole milliseconds, so the half RTTs of equal links differ by about this much.
TIE_SECONDS: Final = 0.0005


class EarliestDeliveryScheduler(Generic[LaneT]):
    """Per-packet choice of the path with the earliest expected delivery.

    Paths whose expected deliveries lie within :data:`TIE_SECONDS` of each other count as
    equal and take turns, so equal links share a sprayed flow round-robin (rather than the
    first in order taking all of it) while a clearly faster or emptier path still wins.
    """

    __slots__ = ("_lanes", "_turn")

    def __init__(self) -> None:
        self._lanes: tuple[LaneT, ...] = ()
        self._turn = 0

    def set_paths(self, lanes: Iterable[LaneT]) -> None:
        """Replace the live paths."""
        self._lanes = tuple(lanes)
        self._turn = 0

    def pick(self) -> LaneT | None:
        """The lane with room whose next packet would arrive first, else None."""
        lanes = self._lanes
        count = len(lanes)
        if not count:
            return None
        start = self._turn % count
        self._turn = start + 1
        best: LaneT | None = None
        best_due = math.inf
        for index in range(start, start + count):
            lane = lanes[index % count]
            queued = lane.waitsnd()
            if queued >= lane.limit:
                continue
            due = lane.half_rtt
            beyond = queued - lane.window
            if beyond >= 0:
                due += (beyond + 1) * lane.seconds_per_segment
            # Only a clearly earlier delivery displaces the first acceptable lane in turn.
            if due < best_due - TIE_SECONDS:
                best, best_due = lane, due
        return best
