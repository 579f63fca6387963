"""Rates from counter deltas under a fake sampler clock: exact, reset-safe, bounded."""

from __future__ import annotations

from typing import Any

import pytest

from ratbond.status.model import Rates
from ratbond.status.sampler import Sampler, counter_delta


def snap(*paths: tuple[int, int | None, int | None], state: str = "up",
         session: str | None = None) -> dict[str, Any]:
    rows = []
    for path_id, tx, rx in paths:
        row: dict[str, Any] = {"path_id": path_id, "wan": f"wan{path_id}", "state": state,
                               "tx_bytes": tx, "rx_bytes": rx, "srtt_ms": 10 * path_id}
        if session:
            row["session"] = session
        rows.append(row)
    return {"paths": rows}


def test_counter_delta_treats_a_smaller_value_as_a_restart() -> None:
    assert counter_delta(100, 250) == 150
    assert counter_delta(1000, 40) == 40
    assert counter_delta(None, 5) is None and counter_delta(5, None) is None


def test_one_and_ten_second_rates_are_exact() -> None:
    sampler = Sampler()
    assert sampler.rates() == {}
    sampler.add(0.0, snap((1, 0, 0)))
    assert sampler.rates() == {"1": Rates()}  # one sample: no rate yet
    for t in range(1, 16):
        sampler.add(float(t), snap((1, 1000 * t, 500 * t * t)))
    rates = sampler.rates()["1"]
    assert rates.tx_1s == 1000.0
    assert rates.rx_1s == 500 * (15 * 15 - 14 * 14)  # 14 500 B/s over the last second
    assert rates.tx_10s == 1000.0
    assert rates.rx_10s == 500 * (15 * 15 - 5 * 5) / 10


def test_short_history_averages_over_what_there_is() -> None:
    sampler = Sampler()
    for t, tx in ((0.0, 0), (1.0, 1000), (2.0, 3000)):
        sampler.add(t, snap((1, tx, None)))
    rates = sampler.rates()["1"]
    assert (rates.tx_1s, rates.tx_10s) == (2000.0, 1500.0)
    assert rates.rx_1s is None and rates.rx_10s is None  # no rx counter: no rate, not 0


def test_jittered_sample_times_still_pick_the_previous_sample() -> None:
    sampler = Sampler()
    for t, tx in ((0.0, 0), (0.998, 998), (2.003, 2003)):
        sampler.add(t, snap((1, tx, 0)))
    rates = sampler.rates()["1"]
    assert rates.tx_1s == pytest.approx(1000.0)
    assert rates.tx_10s == pytest.approx(1000.0)


def test_a_path_restart_counts_from_zero_never_negative() -> None:
    sampler = Sampler()
    for t, tx in ((0.0, 0), (1.0, 10_000), (2.0, 20_000), (3.0, 3_000), (4.0, 5_000)):
        sampler.add(t, snap((1, tx, 0)))
    rates = sampler.rates()["1"]
    assert rates.tx_1s == 2000.0
    assert rates.tx_10s == (10_000 + 10_000 + 3_000 + 2_000) / 4
    history = sampler.history()
    assert history["paths"][0]["tx"] == [None, 10_000.0, 10_000.0, 3_000.0, 2_000.0]
    assert all(v is None or v >= 0 for v in history["paths"][0]["tx"])


def test_paths_are_keyed_by_session_and_a_gap_carries_nothing() -> None:
    sampler = Sampler()
    sampler.add(0.0, {"paths": [*snap((1, 0, 0), session="aa")["paths"],
                                *snap((1, 0, 0), session="bb")["paths"]]})
    sampler.add(1.0, {"paths": snap((1, 800, 0), session="aa")["paths"]})  # bb/1 vanished
    sampler.add(2.0, {"paths": [*snap((1, 1600, 0), session="aa")["paths"],
                                *snap((1, 90_000, 0), session="bb")["paths"]]})
    rates = sampler.rates()
    assert rates["aa/1"].tx_1s == 800.0
    assert rates["bb/1"].tx_1s is None  # reappeared: no interval with both ends yet
    sampler.add(3.0, {"paths": snap((1, 91_000, 0), session="bb")["paths"]})
    assert set(sampler.rates()) == {"bb/1"}
    assert sampler.rates()["bb/1"].tx_1s == 1000.0


def test_time_must_advance_and_the_ring_is_bounded() -> None:
    sampler = Sampler(interval_s=1.0, horizon_s=5.0)
    assert sampler.add(1.0, snap((1, 0, 0)))
    assert not sampler.add(1.0, snap((1, 99, 0)))
    assert not sampler.add(0.5, snap((1, 99, 0)))
    for t in range(2, 20):
        sampler.add(float(t), snap((1, t, 0)))
    assert len(sampler) == 6
    assert sampler.history()["times"] == [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]


def test_state_age_follows_transitions() -> None:
    sampler = Sampler()
    sampler.add(0.0, snap((1, 0, 0)))
    sampler.add(1.0, snap((1, 0, 0)))
    sampler.add(2.0, snap((1, 0, 0), state="down"))
    sampler.add(3.0, snap((1, 0, 0), state="down"))
    assert sampler.since(3.5, {"1": "down"}) == {"1": 1.5}
    assert sampler.since(3.5, {"1": "up"}) == {"1": 0.0}  # changed after the last sample
    assert sampler.since(3.5, {"7": "up"}) == {}
    sampler.add(4.0, {"paths": []})
    sampler.add(5.0, snap((1, 0, 0), state="down"))  # back after a gap: a fresh start
    assert sampler.since(5.5, {"1": "down"}) == {"1": 0.5}


def test_history_since_returns_only_newer_samples_aligned() -> None:
    sampler = Sampler()
    sampler.add(0.0, snap((1, 0, 0)))
    sampler.add(1.0, snap((1, 100, 0), (2, 0, 0)))
    sampler.add(2.0, snap((1, 300, 0), (2, 50, 0)))
    full = sampler.history()
    assert full["times"] == [0.0, 1.0, 2.0] and full["now"] == 2.0
    assert [p["key"] for p in full["paths"]] == ["1", "2"]
    assert full["paths"][1]["tx"] == [None, None, 50.0]
    assert full["paths"][0]["rtt_ms"] == [10.0, 10.0, 10.0]
    newer = sampler.history(after=1.0)
    assert newer["times"] == [2.0]
    assert [p["tx"] for p in newer["paths"]] == [[200.0], [50.0]]
    assert sampler.history(after=2.0)["paths"] == []
