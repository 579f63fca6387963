"""Which path carries the next packet.

* :class:`ConsistentScheduler` -- weighted rendezvous (highest random weight) hashing of
  the flow key onto the live paths.  Every (flow, path) pair gets a pseudo-random score
  scaled by the path's weight and the flow takes the best path, so a flow stays on its
  path while that path lives, and a path joining or leaving moves only the flows it wins
  or held (the minimum any scheme can move).  Scores are computed once per flow and
  cached until the set of paths changes.
* :class:`RoundRobinScheduler` -- per packet over the live paths, skipping paths without
  room, so one slow or lossy link fills up and is passed over instead of stalling the
  bond (the receiver's reorder buffer puts the flow back in order).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Final

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


class RoundRobinScheduler:
    """Per-packet rotation over the live paths that have room."""

    __slots__ = ("_cursor", "_paths")

    def __init__(self) -> None:
        self._paths: list[int] = []
        self._cursor = 0

    def set_paths(self, paths: Iterable[int]) -> None:
        self._paths = sorted(paths)
        self._cursor = 0

    def pick(self, has_room: Callable[[int], bool]) -> int | None:
        """Next path after the previous pick for which ``has_room`` holds, else None."""
        paths = self._paths
        count = len(paths)
        cursor = self._cursor
        for step in range(count):
            index = (cursor + step) % count
            path_id = paths[index]
            if has_room(path_id):
                self._cursor = index + 1
                return path_id
        return None
