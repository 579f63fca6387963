"""Failover measurement (``ratbond.lab.failover``) on synthetic data: no root, no lab.

The demo and the failover bench both rely on these answers: which reading first showed a
path gone or back, how long goodput stalled after a cut (the sum and the worst flow), and
what an iperf3 report or a status line says. One test runs the real poller against a
status page served on loopback.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratbond.lab.failover import (
    Gap,
    Interval,
    Marks,
    PathReading,
    Sample,
    StatusPoller,
    Transition,
    count_drops,
    failover_gap,
    first_after,
    goodput_after_cut,
    goodput_analysis,
    leave_and_rejoin,
    parse_intervals,
    parse_sample,
    path_id_on,
    path_timings,
)
from ratbond.lab.netns import Namespace

MBIT = 1e6
STEP = 0.1


def _timeline(rates_mbit: Sequence[float], *flows: Sequence[float]) -> list[Interval]:
    """0.1 s intervals with these sums (Mbit/s) and, if given, these per-flow rates."""
    return [Interval(start=k * STEP, end=(k + 1) * STEP, seconds=STEP,
                     bits_per_second=rate * MBIT,
                     streams=tuple(flow[k] * MBIT for flow in flows))
            for k, rate in enumerate(rates_mbit)]


def _sample(t: float, up: Sequence[int], prev: float | None = None,
            rx: int = 0) -> Sample:
    """A reading of three paths on wan1..wan3; those in ``up`` are up."""
    paths = tuple(PathReading(path_id=i, wan=f"wan{i}", up=i in up, rx_bytes=rx)
                  for i in (1, 2, 3))
    return Sample(t=t, prev=t - 0.02 if prev is None else prev, paths=paths)


# ----- the gap on the sum ---------------------------------------------------------------------


def test_gap_is_the_stall_after_the_cut_measured_against_the_median_before() -> None:
    rates = [10.0] * 20 + [0.0] * 7 + [0.5] * 3 + [9.0] * 10  # cut at 2.0 s
    gap = failover_gap(_timeline(rates), cut_at=2.0)
    assert gap is not None
    assert gap.seconds == pytest.approx(1.0)   # 0.5 Mbit/s is still under 10 % of 10
    assert gap.starts_after_cut == pytest.approx(0.0)
    assert gap.baseline_mbit == pytest.approx(10.0)


def test_a_warm_up_stall_before_the_cut_is_not_the_failover_gap() -> None:
    rates = [0.0] * 8 + [10.0] * 12 + [10.0] * 3 + [0.0] * 4 + [10.0] * 5
    gap = failover_gap(_timeline(rates), cut_at=2.0)
    assert gap is not None
    assert gap.seconds == pytest.approx(0.4)
    assert gap.starts_after_cut == pytest.approx(0.3)


def test_a_stall_spanning_the_cut_counts_from_its_start() -> None:
    rates = [10.0] * 18 + [0.0] * 6 + [10.0] * 6
    gap = failover_gap(_timeline(rates), cut_at=2.0)
    assert gap is not None
    assert (gap.seconds, gap.starts_after_cut, gap.baseline_mbit) == pytest.approx(
        (0.6, -0.2, 10.0))


def test_seamless_failover_is_a_zero_gap_and_no_baseline_is_none() -> None:
    assert failover_gap(_timeline([10.0] * 30), cut_at=2.0) == Gap(0.0, 0.0, 10.0)
    assert failover_gap(_timeline([10.0] * 30), cut_at=0.05) is None
    assert failover_gap(_timeline([0.0] * 30), cut_at=2.0) is None
    assert failover_gap([], cut_at=2.0) is None


def test_slow_start_before_settle_stays_out_of_the_baseline() -> None:
    rates = [1.0] * 10 + [10.0] * 8 + [0.5] * 2 + [10.0] * 5  # cut at 1.8 s
    # With slow start in, the median is 1 Mbit/s and 0.5 Mbit/s passes for goodput.
    assert failover_gap(_timeline(rates), cut_at=1.8) == Gap(0.0, 0.0, 1.0)
    settled = failover_gap(_timeline(rates), cut_at=1.8, settle=1.0)
    assert settled is not None
    assert (settled.seconds, settled.baseline_mbit) == pytest.approx((0.2, 10.0))


def test_a_partial_last_interval_is_neither_baseline_nor_stall() -> None:
    intervals = [*_timeline([10.0] * 30), Interval(3.0, 3.02, 0.02, 0.0, ())]
    assert failover_gap(intervals, cut_at=2.0) == Gap(0.0, 0.0, 10.0)


@given(before=st.lists(st.floats(1.0, 100.0), min_size=1, max_size=30),
       stall=st.integers(0, 40), after=st.lists(st.floats(1.0, 100.0), max_size=30))
def test_a_stall_inserted_after_the_cut_is_found_exactly(before: list[float], stall: int,
                                                         after: list[float]) -> None:
    cut_at = len(before) * STEP
    gap = failover_gap(_timeline(before + [0.0] * stall + after), cut_at)
    assert gap is not None
    # Rates of at least 1 Mbit/s stay above 10 % of a median of at most 100 only when the
    # median is below 10: otherwise they may join the stall; never shorter, though.
    assert gap.seconds >= stall * STEP - 1e-9
    if max(before + after) < 10 * min(before + after):
        assert gap.seconds == pytest.approx(stall * STEP)
        assert gap.starts_after_cut == pytest.approx(0.0)


# ----- flow stall, dip, mean ------------------------------------------------------------------


def test_a_flow_stalled_behind_the_others_shows_as_flow_stall_not_as_gap() -> None:
    # Four flows of 2.5 Mbit/s; at the cut (2.0 s) flow 2 stalls 0.8 s, the others take
    # over half of its share, so the sum dips to 8.75 and never under 10 %.
    steady, stalled = [2.5] * 20, [2.5] * 20 + [0.0] * 8 + [2.5] * 10
    others = [*steady, *[2.5 * 7 / 6] * 8, *[2.5] * 10]
    flows = [others, others, stalled, others]
    sums = [sum(f[k] for f in flows) for k in range(38)]
    found = goodput_after_cut(_timeline(sums, *flows), cut_at=2.0)
    assert found is not None
    assert found.gap_s == 0.0
    assert found.flow_stall_s == pytest.approx(0.8)
    assert found.baseline_mbit == pytest.approx(10.0)
    assert found.dip == pytest.approx(0.875)
    assert found.mean_after_mbit == pytest.approx((8 * 8.75 + 10 * 10.0) / 18)


def test_the_worst_flow_counts_and_a_flow_idle_before_the_cut_cannot_stall() -> None:
    idle = [0.0] * 30
    short = [5.0] * 20 + [0.0] * 2 + [5.0] * 8
    long_ = [5.0] * 20 + [0.0] * 5 + [5.0] * 5
    sums = [a + b for a, b in zip(short, long_, strict=True)]
    found = goodput_after_cut(_timeline(sums, short, long_, idle), cut_at=2.0)
    assert found is not None
    assert found.flow_stall_s == pytest.approx(0.5)
    assert found.gap_s == pytest.approx(0.2)     # both flows at zero for two intervals
    assert found.dip == 0.0


def test_no_analysis_without_a_baseline_or_anything_after_the_cut() -> None:
    assert goodput_after_cut(_timeline([10.0] * 10, [10.0] * 10), cut_at=0.05) is None
    assert goodput_after_cut(_timeline([10.0] * 10, [10.0] * 10), cut_at=1.0) is None


def test_the_bench_rounds_the_analysis_and_starts_it_skew_before_the_event() -> None:
    rates = [10.0] * 25 + [0.0] * 3 + [10.0] * 10
    rows = goodput_analysis(_timeline(rates, rates), event_at=2.9, skew=0.4)
    assert rows == {"median_before_mbit": 10.0, "gap_s": 0.3, "dip": 0.0,
                    "flow_stall_s": 0.3, "mean_after_mbit": round(100 / 13, 2)}
    assert goodput_analysis([], event_at=2.0)["gap_s"] is None


# ----- leave and rejoin from samples ----------------------------------------------------------


def _flap(left: float = 1.3, back: float = 2.25) -> list[Sample]:
    """Readings every 50 ms: path 2 up until ``left``, down until ``back``."""
    return [_sample(k * 0.05, (1, 3) if left <= k * 0.05 < back else (1, 2, 3),
                    prev=(k - 1) * 0.05)
            for k in range(60)]


def test_leave_and_rejoin_are_the_first_readings_after_the_cut_and_the_restore() -> None:
    samples = _flap()
    moves = leave_and_rejoin(samples, lambda s: 2 in s.up_paths, cut_at=1.0,
                             restored_at=2.0)
    assert moves.left is not None and moves.rejoined is not None
    assert moves.left_after(1.0) == pytest.approx(0.3)
    assert moves.rejoined_after(2.0) == pytest.approx(0.25)
    assert moves.resolution == pytest.approx(0.05)


def test_a_path_that_never_left_has_no_leave_and_one_never_back_no_rejoin() -> None:
    steady = [_sample(k * 0.1, (1, 2, 3)) for k in range(30)]
    moves = leave_and_rejoin(steady, lambda s: 2 in s.up_paths, 1.0, 2.0)
    assert moves.left is None and moves.left_after(1.0) is None
    assert moves.rejoined is not None and moves.rejoined.t >= 2.0
    gone = [_sample(k * 0.1, (1, 3) if k >= 12 else (1, 2, 3)) for k in range(30)]
    moves = leave_and_rejoin(gone, lambda s: "wan2" in s.up_wans, 1.0, 2.0)
    assert moves.left_after(1.0) == pytest.approx(0.2)
    assert moves.rejoined_after(2.0) is None
    assert Transition(None, None).resolution == 0.0


def test_first_after_includes_a_reading_at_the_mark_itself() -> None:
    samples = [_sample(1.0, (1,)), _sample(1.1, ())]
    assert first_after(samples, 1.0, lambda _s: True) is samples[0]
    assert first_after(samples, 1.05, lambda s: not s.up_paths) is samples[1]
    assert first_after(samples, 1.2, lambda _s: True) is None


def test_drops_count_every_path_seen_up_then_not() -> None:
    samples = [_sample(0.0, (1, 2)), _sample(0.1, (1,)), _sample(0.2, (1, 2, 3)),
               _sample(0.3, ()), _sample(0.4, ())]
    assert count_drops(samples) == 1 + 3
    assert count_drops([]) == 0


def test_path_ids_are_found_by_wan() -> None:
    samples = [_sample(0.0, (1, 2, 3))]
    assert path_id_on(samples, "wan3") == 3
    assert path_id_on(samples, "wan9") is None


def test_the_bench_times_leave_and_rejoin_per_end_from_polls_and_logs() -> None:
    marks = Marks(launched=0.0, event=1.0, cut_done=1.001, restore_start=1.9, restored=2.0)
    samples = {"client": _flap(left=1.3, back=2.25), "server": _flap(left=1.35, back=2.3)}
    logs = {"client": [(1.28, "down"), (2.21, "up")], "server": [(0.5, "down")]}
    out = path_timings(samples, logs, path_id=2, marks=marks)
    assert out["leave_client_ms"] == pytest.approx(300.0)
    assert out["leave_server_ms"] == pytest.approx(350.0)
    assert out["rejoin_client_ms"] == pytest.approx(250.0)
    assert out["rejoin_server_ms"] == pytest.approx(300.0)
    assert out["leave_client_log_ms"] == pytest.approx(280.0)
    assert out["rejoin_client_log_ms"] == pytest.approx(210.0)
    # A log line from before the event says nothing about it.
    assert out["leave_server_log_ms"] is None and out["rejoin_server_log_ms"] is None
    assert out["poll_resolution_ms"] == pytest.approx(50.0)


# ----- parsing --------------------------------------------------------------------------------


def test_status_lines_become_samples_adding_up_the_paths_of_one_wan() -> None:
    line = json.dumps({"t": 5.0, "prev": 4.98, "paths": [[1, "wan1", "up", 100],
                                                         [4, "wan1", "down", 50],
                                                         [2, "wan2", "down", 7]]})
    sample = parse_sample(line)
    assert (sample.t, sample.prev) == (5.0, 4.98)
    assert sample.up_wans == frozenset({"wan1"})
    assert sample.up_paths == frozenset({1})
    assert sample.rx_by_wan == {"wan1": 150, "wan2": 7}


@pytest.mark.parametrize("line", [
    "", "not json", "[]", '{"t": 1.0, "prev": 0.9}', '{"t": "x", "prev": 0, "paths": []}',
    '{"t": 1.0, "prev": 0.9, "paths": [[null, "wan1", "up", 0]]}',
    '{"t": 1.0, "prev": 0.9, "paths": [[1, "wan1", "up"]]}',
])
def test_a_line_that_is_not_a_reading_is_a_value_error(line: str) -> None:
    with pytest.raises(ValueError, match="not a status reading"):
        parse_sample(line)


def _interval(start: float, rates: Sequence[float]) -> dict[str, Any]:
    streams = [{"start": start, "end": start + 0.1, "seconds": 0.1, "bits_per_second": r}
               for r in rates]
    return {"streams": streams, "sum": {"start": start, "end": start + 0.1, "seconds": 0.1,
                                        "bits_per_second": sum(rates)}}


def test_iperf3_intervals_keep_the_sum_and_every_flow() -> None:
    report = {"start": {}, "intervals": [_interval(0.0, [1e6, 2e6]), _interval(0.1, [0, 3e6])],
              "end": {}}
    found = parse_intervals(report)
    assert found == [Interval(0.0, 0.1, 0.1, 3e6, (1e6, 2e6)),
                     Interval(0.1, 0.2, 0.1, 3e6, (0.0, 3e6))]
    assert parse_intervals({"error": "unable to connect"}) == []


def test_an_interval_without_its_figures_is_a_value_error() -> None:
    broken = _interval(0.0, [1e6])
    del broken["sum"]["bits_per_second"]
    with pytest.raises(ValueError, match="not an iperf3 interval"):
        parse_intervals({"intervals": [broken]})


# ----- the poller against a status page on loopback -------------------------------------------


class _Here(Namespace):
    """Runs the poller in this namespace: the test serves its status page on loopback."""

    def __init__(self) -> None:
        super().__init__("here")

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), start_new_session=True, **kwargs)


@pytest.fixture
def status_page() -> Iterator[tuple[int, dict[str, Any]]]:
    """A loopback ``/status.json`` serving whatever the test puts in the yielded dict."""
    status: dict[str, Any] = {"paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(status).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], status
    finally:
        server.shutdown()
        server.server_close()


def test_the_poller_sees_a_path_leave_and_stops_with_close(
        status_page: tuple[int, dict[str, Any]]) -> None:
    port, status = status_page
    status["paths"] = [{"path_id": 1, "wan": "wan1", "state": "up", "rx_bytes": 10},
                       {"path_id": 2, "wan": "wan2", "state": "up", "rx_bytes": 20}]
    with StatusPoller(_Here(), port, period=0.02) as poller:
        first = poller.wait(lambda _s: True, timeout=10)
        assert first is not None and first.up_wans == {"wan1", "wan2"}
        assert first.rx_by_wan == {"wan1": 10, "wan2": 20}
        cut_at = poller.now()
        status["paths"][1] = {**status["paths"][1], "state": "down"}
        left = poller.wait(lambda s: "wan2" not in s.up_wans, timeout=10, after=cut_at)
        assert left is not None and left.t >= cut_at and left.prev < left.t
        assert poller.wait(lambda s: not s.up_paths, timeout=0.1) is None
    # Closed: the poller is gone, so nothing newer comes and waiting gives up at once.
    assert poller.wait(lambda _s: True, timeout=5, after=poller.now()) is None
    samples = poller.samples()
    assert samples[0] == first and left in samples
    assert [s.t for s in samples] == sorted(s.t for s in samples)


def test_goodput_by_wan_buckets_received_bytes_per_wan() -> None:
    from ratbond.lab.failover import PathReading, Sample, goodput_by_wan

    def sample(t: float, rx1: int, rx2: int) -> Sample:
        return Sample(t, t - 0.1, (PathReading(1, "wan1", True, rx1),
                                   PathReading(2, "wan2", True, rx2)))

    # wan1 receives 125,000 bytes every 0.5 s (2 Mbit/s); wan2 restarts its counter at 1.0 s.
    samples = [sample(0.0, 0, 0), sample(0.5, 125_000, 62_500), sample(1.0, 250_000, 0),
               sample(1.5, 375_000, 62_500)]
    series = goodput_by_wan(samples, origin=0.0)
    assert [round(v, 3) for _, v in series["wan1"]] == [2.0, 2.0, 2.0]
    # A counter that went backwards counts from zero, never as a negative rate.
    assert [round(v, 3) for _, v in series["wan2"]] == [1.0, 0.0, 1.0]
    assert [t for t, _ in series["wan1"]] == [0.0, 0.5, 1.0]
    assert goodput_by_wan(samples[:1], origin=0.0) == {}
