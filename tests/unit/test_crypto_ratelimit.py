"""Token buckets per source: burst, refill, and a table that never grows past its bound."""

from __future__ import annotations

import pytest

from ratbond.crypto.ratelimit import TokenBuckets


def test_burst_then_refill() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0, max_entries=10)
    assert [buckets.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.allow("b", 0.0)  # others are unaffected
    assert not buckets.allow("a", 0.4)
    assert buckets.allow("a", 0.5)  # one token back after 0.5 s at 2/s
    assert not buckets.allow("a", 0.5)
    assert [buckets.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]


def test_table_is_bounded_and_prunes_full_buckets() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2.0, max_entries=4)
    for index in range(4):
        assert buckets.allow(f"s{index}", 0.0)
    assert not buckets.allow("new", 0.5)  # full of active sources: refused
    assert len(buckets) == 4
    assert buckets.allow("new", 2.0)  # by now the old buckets refilled and were pruned
    assert len(buckets) == 1


def test_prune_runs_at_most_once_per_interval() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0, max_entries=2, prune_interval=1.0)
    assert buckets.allow("a", 0.0) and buckets.allow("b", 0.0)
    assert not buckets.allow("c", 0.1)  # pruned at 0.1, nothing was full yet
    assert not buckets.allow("c", 1.05)  # full now, but the last prune was 0.95 s ago
    assert buckets.allow("c", 1.2)


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(rate=0, burst=1, max_entries=1)
