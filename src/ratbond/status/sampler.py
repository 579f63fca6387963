"""Rates and history from counters: a bounded ring of snapshots taken once per second.

The cores only count (bytes, packets); how fast a path goes is a difference of two counts over
a known time, computed here once so every view agrees.  A counter that goes backwards means
the path restarted from zero: the new value is what it carried since, never a negative rate.
Pure and clock-free: :meth:`Sampler.add` takes ``now``, so tests drive it with a fake clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ratbond.status.model import SCHEMA_VERSION, Rates, as_int, as_rtt, as_text, raw_path_key

DEFAULT_INTERVAL_S = 1.0
DEFAULT_HORIZON_S = 600.0
SHORT_WINDOW_S = 1.0
LONG_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class PathPoint:
    """One path in one sample: its counters, RTT, state and its rates since the last sample."""

    tx_bytes: int | None
    rx_bytes: int | None
    rtt_ms: float | None
    state: str
    tx_rate: float | None  # bytes/s over the interval ending at this sample (0.1 B/s steps)
    rx_rate: float | None


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    paths: Mapping[str, PathPoint]


@dataclass(frozen=True, slots=True)
class PathLabel:
    path_id: int
    session: str | None
    wan: str | None


def counter_delta(before: int | None, after: int | None) -> int | None:
    """Growth of a counter between two samples; a smaller value is a restart from zero."""
    if before is None or after is None:
        return None
    return after - before if after >= before else after


class Sampler:
    """Keeps ``horizon_s`` of samples and derives per-path rates, state ages and history."""

    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S,
                 horizon_s: float = DEFAULT_HORIZON_S) -> None:
        self.interval_s = interval_s
        self._ring: deque[Sample] = deque(maxlen=max(2, round(horizon_s / interval_s) + 1))
        self._labels: dict[str, PathLabel] = {}
        self._state_since: dict[str, tuple[str, float]] = {}
        self._last_seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def latest(self) -> float | None:
        return self._ring[-1].t if self._ring else None

    def add(self, now: float, snap: Mapping[str, Any]) -> bool:
        """Record one snapshot taken at ``now``; a time not after the last sample is ignored."""
        if self._ring and now <= self._ring[-1].t:
            return False
        previous = self._ring[-1] if self._ring else None
        points: dict[str, PathPoint] = {}
        raw_paths = snap.get("paths")
        for raw in raw_paths if isinstance(raw_paths, (list, tuple)) else ():
            if not isinstance(raw, Mapping):
                continue
            key = raw_path_key(raw)
            if key is None or key in points:
                continue
            state = as_text(raw.get("state")) or "unknown"
            tx, rx = as_int(raw.get("tx_bytes")), as_int(raw.get("rx_bytes"))
            rtt = as_rtt(raw.get("srtt_ms") if "srtt_ms" in raw else raw.get("rtt_ms"))
            before = previous.paths.get(key) if previous is not None else None
            tx_rate = rx_rate = None
            if previous is not None and before is not None:
                dt = now - previous.t
                tx_delta = counter_delta(before.tx_bytes, tx)
                rx_delta = counter_delta(before.rx_bytes, rx)
                tx_rate = None if tx_delta is None else round(tx_delta / dt, 1)
                rx_rate = None if rx_delta is None else round(rx_delta / dt, 1)
            points[key] = PathPoint(tx, rx, None if rtt is None else round(rtt, 1), state,
                                    tx_rate, rx_rate)
            self._labels[key] = PathLabel(int(as_int(raw.get("path_id")) or 0),
                                          as_text(raw.get("session")), as_text(raw.get("wan")))
            last = self._state_since.get(key)
            reappeared = previous is not None and before is None
            if last is None or last[0] != state or reappeared:
                self._state_since[key] = (state, now)
            self._last_seen[key] = now
        self._ring.append(Sample(now, points))
        self._forget_unseen()
        return True

    def _forget_unseen(self) -> None:
        """Labels and state ages live only as long as the ring holds their path."""
        oldest = self._ring[0].t
        for key in [k for k, seen in self._last_seen.items() if seen < oldest]:
            del self._last_seen[key], self._labels[key], self._state_since[key]

    # ------------------------------------------------------------------ rates

    def _tail(self, window_s: float) -> list[Sample]:
        """The samples a window spans, oldest first: from the last one at least ``window_s``
        before the newest (or the oldest one while the history is shorter)."""
        if len(self._ring) < 2:
            return []
        limit = self._ring[-1].t - window_s + self.interval_s / 2
        tail: list[Sample] = []
        for sample in reversed(self._ring):
            tail.append(sample)
            if sample.t <= limit and len(tail) >= 2:
                break
        tail.reverse()
        return tail

    @staticmethod
    def _window_rate(tail: list[Sample], key: str, direction: str) -> float | None:
        total = 0
        counted = False
        for before, after in itertools.pairwise(tail):
            a, b = before.paths.get(key), after.paths.get(key)
            if a is None or b is None:
                continue
            delta = counter_delta(getattr(a, direction), getattr(b, direction))
            if delta is not None:
                total += delta
                counted = True
        span = tail[-1].t - tail[0].t if tail else 0.0
        return round(total / span, 1) if counted and span > 0 else None

    def rates(self) -> dict[str, Rates]:
        """Per-path rates (bytes/s) over the last 1 s and 10 s, for paths in the last sample."""
        if not self._ring:
            return {}
        short, long = self._tail(SHORT_WINDOW_S), self._tail(LONG_WINDOW_S)
        return {key: Rates(tx_1s=self._window_rate(short, key, "tx_bytes"),
                           rx_1s=self._window_rate(short, key, "rx_bytes"),
                           tx_10s=self._window_rate(long, key, "tx_bytes"),
                           rx_10s=self._window_rate(long, key, "rx_bytes"))
                for key in self._ring[-1].paths}

    def since(self, now: float, states: Mapping[str, str]) -> dict[str, float]:
        """Seconds each path has been in ``states[key]`` as far as the samples saw it; a path
        whose state changed after the last sample is 0 s into its new state."""
        out = {}
        for key, state in states.items():
            seen = self._state_since.get(key)
            if seen is not None:
                out[key] = round(max(0.0, now - seen[1]), 3) if seen[0] == state else 0.0
        return out

    # ------------------------------------------------------------------ history

    def _window(self, after: float | None) -> Iterator[Sample]:
        return (s for s in self._ring if after is None or s.t > after)

    def history(self, after: float | None = None) -> dict[str, Any]:
        """Samples newer than ``after`` as aligned series (``None`` where a path was absent)."""
        samples = list(self._window(after))
        keys = sorted({key for s in samples for key in s.paths},
                      key=lambda k: (self._labels[k].session or "", self._labels[k].path_id))
        paths = []
        for key in keys:
            label = self._labels[key]
            points = [s.paths.get(key) for s in samples]
            paths.append({
                "key": key, "path_id": label.path_id, "session": label.session,
                "wan": label.wan,
                "tx": [p.tx_rate if p else None for p in points],
                "rx": [p.rx_rate if p else None for p in points],
                "rtt_ms": [p.rtt_ms if p else None for p in points],
                "up": [None if p is None else int(p.state == "up") for p in points],
            })
        return {"schema_version": SCHEMA_VERSION, "interval_s": self.interval_s,
                "now": self.latest, "times": [round(s.t, 3) for s in samples], "paths": paths}

