"""Per-source token buckets for handshake initiations, in a table of bounded size.

Each source IP may send ``burst`` initiations at once and ``rate`` per second after that.
Ports are not part of the key: they cost an attacker nothing.  When the table is full, entries
whose bucket has refilled completely (indistinguishable from a source never seen) are pruned,
at most once per ``prune_interval``; if it is still full, new sources are refused until room
frees up, so a flood from spoofed addresses cannot evict the buckets of active sources or
grow memory.
"""

from __future__ import annotations


class TokenBuckets:
    __slots__ = ("_buckets", "_last_prune", "burst", "max_entries", "prune_interval", "rate")

    def __init__(
        self, rate: float, burst: float, max_entries: int, prune_interval: float = 1.0
    ) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError("rate must be > 0, burst >= 1, max_entries >= 1")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self.prune_interval = prune_interval
        self._buckets: dict[str, list[float]] = {}  # source -> [tokens, time of last update]
        self._last_prune = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str, now: float) -> bool:
        """Take one token from ``source``'s bucket; ``False`` when it is empty."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_entries and not self._prune(now):
                return False
            self._buckets[source] = [self.burst - 1, now]
            return True
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def prune(self, now: float) -> None:
        """Drop full buckets now (at most once per ``prune_interval``), e.g. while the table
        is not consulted and would otherwise keep its entries."""
        self._prune(now)

    def _prune(self, now: float) -> bool:
        """Drop full buckets; whether there is room now."""
        if now - self._last_prune >= self.prune_interval:
            self._last_prune = now
            full = [
                source
                for source, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst
            ]
            for source in full:
                del self._buckets[source]
        return len(self._buckets) < self.max_entries
