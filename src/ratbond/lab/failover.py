"""Measuring a failover in the lab: path states over time, goodput over time, the gap.

``ratbond demo`` and ``bench/failover.py`` both cut a link under a running transfer and
ask the same questions: when did the path leave the bond and when did it come back (from
the status endpoint, polled inside a namespace), and how long did goodput stall (from
iperf3's 0.1 s intervals). This module answers them once, so the two report the same
figures the same way:

* :class:`StatusPoller` runs :func:`poll_status` inside a namespace and turns its lines
  into :class:`Sample` readings, stamped on a clock the caller shares with its own marks;
* :func:`first_after`, :func:`leave_and_rejoin`, :func:`count_drops` read path changes
  out of those samples;
* :class:`Transfer` runs ``iperf3 -i 0.1 --json``, :func:`parse_intervals` reads it;
* :func:`failover_gap` and :func:`goodput_after_cut` judge the goodput timeline.

Everything below the two process wrappers is pure and takes its times as arguments.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ratbond.lab.netns import Namespace, stop_process

Clock = Literal["monotonic", "wall"]
# CLOCK_MONOTONIC and the wall clock are both the same in every namespace, so a stamp taken
# inside one compares with a mark taken outside; "wall" also compares with log stamps.
CLOCKS: dict[str, Callable[[], float]] = {"monotonic": time.monotonic, "wall": time.time}
GAP_FRACTION = 0.1          # an interval under this share of the baseline has "no goodput"
MIN_INTERVAL = 0.05         # shorter intervals (iperf3's last, partial one) are left out


# ----- status readings ----------------------------------------------------------------------


@dataclass(frozen=True)
class PathReading:
    """One path as the status endpoint showed it."""

    path_id: int
    wan: str
    up: bool
    rx_bytes: int
    tx_bytes: int = 0
    remote: str | None = None  # the peer's address (a server's paths name no WAN)


@dataclass(frozen=True)
class Sample:
    """One successful status reading taken at ``t``; ``prev`` is the attempt before it.

    ``t - prev`` is how coarse ``t`` is as the moment a change happened: the change came
    after ``prev`` at the earliest.
    """

    t: float
    prev: float
    paths: tuple[PathReading, ...]

    @property
    def up_paths(self) -> frozenset[int]:
        return frozenset(p.path_id for p in self.paths if p.up)

    @property
    def up_wans(self) -> frozenset[str]:
        """WANs with at least one path up (with ``--mux`` a WAN carries several)."""
        return frozenset(p.wan for p in self.paths if p.up)

    @property
    def rx_by_wan(self) -> dict[str, int]:
        """Bytes received so far per WAN, all its paths added up."""
        rx: dict[str, int] = {}
        for p in self.paths:
            rx[p.wan] = rx.get(p.wan, 0) + p.rx_bytes
        return rx


def parse_sample(line: str | bytes) -> Sample:
    """A :func:`poll_status` line as a :class:`Sample`; ValueError when it is not one."""
    try:
        raw = json.loads(line)
        paths = tuple(_path_reading(row) for row in raw["paths"])
        return Sample(t=float(raw["t"]), prev=float(raw["prev"]), paths=paths)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a status reading: {line!r}") from exc


def _path_reading(row: Sequence[Any]) -> PathReading:
    """``[path_id, wan, state, rx_bytes]`` + ``tx_bytes, remote`` from newer pollers."""
    pid, wan, state, rx, *rest = row
    tx = rest[0] if rest else 0
    remote = rest[1] if len(rest) > 1 else None
    return PathReading(int(pid), str(wan), state == "up", int(rx or 0), int(tx or 0),
                       None if remote is None else str(remote))


def poll_status(url: str, period: float, clock: Clock) -> None:
    """Print one JSON line per successful read of ``url``, at most every ``period`` s.

    Runs inside a namespace (``python -c``, see :class:`StatusPoller`): one long-lived
    process instead of one per reading keeps the timing fine-grained. Failed reads print
    nothing but still move ``prev``, so a sample's resolution stays honest.
    """
    now = CLOCKS[clock]
    previous = now()
    while True:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                paths = json.load(reply).get("paths", [])
            rows = [[p.get("path_id"), p.get("wan"), p.get("state"), p.get("rx_bytes", 0),
                     p.get("tx_bytes", 0), p.get("remote")] for p in paths]
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            rows = None  # not answering (yet), or not a status page: no reading
        seen = now()
        if rows is not None:
            try:
                print(json.dumps({"t": seen, "prev": previous, "paths": rows}), flush=True)
            except BrokenPipeError:
                return
        previous = seen
        time.sleep(max(0.0, period - (time.monotonic() - started)))


class StatusPoller:
    """A ratbond end's path states as a growing list of samples, polled inside ``ns``.

    Stamps are on ``clock``; take marks to compare with them from :meth:`now`. Stop it
    with :meth:`close` (or use it as a context manager): it kills the poller process.
    """

    def __init__(self, ns: Namespace, port: int, *, period: float = 0.05,
                 clock: Clock = "monotonic") -> None:
        self.now = CLOCKS[clock]
        url = f"http://127.0.0.1:{port}/status.json"
        code = (f"from ratbond.lab.failover import poll_status; "
                f"poll_status({url!r}, {period!r}, {clock!r})")
        self._proc = ns.popen(sys.executable, "-c", code, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
        self._samples: list[Sample] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                sample = parse_sample(line)
            except ValueError:
                continue
            with self._changed:
                self._samples.append(sample)
                self._changed.notify_all()
        with self._changed:  # the poller is gone: wake waiters so they give up at once
            self._changed.notify_all()

    def samples(self) -> list[Sample]:
        """Every reading so far, oldest first (a copy)."""
        with self._changed:
            return list(self._samples)

    def latest(self) -> Sample | None:
        with self._changed:
            return self._samples[-1] if self._samples else None

    def wait(self, predicate: Callable[[Sample], bool], timeout: float,
             after: float = float("-inf")) -> Sample | None:
        """The first sample stamped at or after ``after`` for which ``predicate`` holds.

        Blocks up to ``timeout`` seconds for it; None when it did not come (or the poller
        died), so the caller decides whether a miss is an error or a figure.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                found = first_after(self._samples[seen:], after, predicate)
                if found is not None:
                    return found
                seen = len(self._samples)
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    return None
                self._changed.wait(left)

    def close(self) -> None:
        stop_process(self._proc, timeout=2.0)
        self._reader.join(timeout=2.0)

    def __enter__(self) -> StatusPoller:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# ----- path changes from samples ------------------------------------------------------------


def first_after(samples: Sequence[Sample], after: float,
                predicate: Callable[[Sample], bool]) -> Sample | None:
    """The first sample stamped at or after ``after`` for which ``predicate`` holds."""
    return next((s for s in samples if s.t >= after and predicate(s)), None)


@dataclass(frozen=True)
class Transition:
    """The readings that first showed a path gone after a cut and back after a restore."""

    left: Sample | None
    rejoined: Sample | None

    def left_after(self, cut_at: float) -> float | None:
        return None if self.left is None else self.left.t - cut_at

    def rejoined_after(self, restored_at: float) -> float | None:
        return None if self.rejoined is None else self.rejoined.t - restored_at

    @property
    def resolution(self) -> float:
        """How coarse the two stamps are: the longest wait between readings behind them."""
        return max((s.t - s.prev for s in (self.left, self.rejoined) if s is not None),
                   default=0.0)


def leave_and_rejoin(samples: Sequence[Sample], is_up: Callable[[Sample], bool],
                     cut_at: float, restored_at: float) -> Transition:
    """When a path (``is_up`` tells whether a sample has it) left and came back.

    Leaving is looked for from the cut on, rejoining from the restore on, so a path that
    never left still gets a rejoin time only if it was seen up after the restore.
    """
    return Transition(left=first_after(samples, cut_at, lambda s: not is_up(s)),
                      rejoined=first_after(samples, restored_at, is_up))


def path_id_on(samples: Sequence[Sample], wan: str) -> int | None:
    """The id of the first path seen on ``wan`` (ids are stable across leave and rejoin)."""
    return next((p.path_id for s in samples for p in s.paths if p.wan == wan), None)


def count_drops(samples: Sequence[Sample]) -> int:
    """How many times a path seen up was, in a later reading, no longer up."""
    count, seen = 0, frozenset[int]()
    for sample in samples:
        count += len(seen - sample.up_paths)
        seen = sample.up_paths
    return count


# ----- the transfer and its intervals -------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """One of iperf3's reporting intervals: the sum over its flows and each flow alone."""

    start: float
    end: float
    seconds: float
    bits_per_second: float
    streams: tuple[float, ...]  # bits per second of each flow, in iperf3's stream order


def parse_intervals(report: Mapping[str, Any]) -> list[Interval]:
    """The intervals of an ``iperf3 --json`` report (none when it has none).

    ValueError when an interval lacks its figures: the report is not iperf3's.
    """
    try:
        return [Interval(start=float(i["sum"]["start"]), end=float(i["sum"]["end"]),
                         seconds=float(i["sum"]["seconds"]),
                         bits_per_second=float(i["sum"]["bits_per_second"]),
                         streams=tuple(float(s["bits_per_second"]) for s in i["streams"]))
                for i in report.get("intervals", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an iperf3 interval: {exc}") from exc


@dataclass
class Transfer:
    """``iperf3 -c SERVER -P flows -i 0.1 --json [-R]`` running inside a namespace.

    ``launched`` is the moment just before the start on the clock given to :meth:`start`;
    iperf3's own timeline starts a little later, once its flows are connected.
    """

    proc: subprocess.Popen[bytes]
    launched: float
    seconds: float

    @classmethod
    def start(cls, ns: Namespace, server_ip: str, port: int, seconds: float, *,
              flows: int = 1, reverse: bool = True, interval: float = 0.1,
              clock: Callable[[], float] = time.time) -> Transfer:
        # iperf3 reads a fractional -t as 0, which means "run forever": whole seconds only.
        argv = ["iperf3", "-c", server_ip, "-p", str(port), "-t", str(max(1, round(seconds))),
                "-P", str(flows), "-i", f"{interval:g}", "--json", "--connect-timeout", "5000",
                *(["-R"] if reverse else [])]
        launched = clock()
        proc = ns.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return cls(proc, launched, seconds)

    def finish(self) -> tuple[int, dict[str, Any]]:
        """Wait for the end; exit code and JSON report (``{"error": ...}`` without one)."""
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            out, err = self.proc.communicate()
        try:
            raw = json.loads(out)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
        except ValueError:
            text = (out + err).decode(errors="replace").strip()
            raw = {"error": f"no JSON: {text[-300:]}"}
        return self.proc.returncode, raw

    def stop(self) -> None:
        stop_process(self.proc)


# ----- the goodput gap ----------------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """The longest stretch of near-zero goodput that ends after a cut."""

    seconds: float
    starts_after_cut: float
    baseline_mbit: float


def _rate(interval: Interval, stream: int | None) -> float:
    return interval.bits_per_second if stream is None else interval.streams[stream]


def _baseline(intervals: Sequence[Interval], cut_at: float, settle: float,
              stream: int | None) -> float | None:
    """Median goodput of the full intervals from ``settle`` until the cut; None if none."""
    before = [_rate(i, stream) for i in intervals
              if i.seconds >= MIN_INTERVAL and i.start >= settle and i.end <= cut_at]
    if not before or statistics.median(before) <= 0:
        return None
    return statistics.median(before)


def failover_gap(intervals: Sequence[Interval], cut_at: float, *,
                 fraction: float = GAP_FRACTION, settle: float = 0.0,
                 stream: int | None = None) -> Gap | None:
    """The failover gap in a goodput timeline (``cut_at`` on iperf3's clock).

    The baseline is the median of the intervals between ``settle`` (to leave slow start
    out) and the cut; the gap is the longest run of consecutive intervals under
    ``fraction`` of it that ends after the cut, counted from its first interval (a stall
    that began just before the cut is still the failover's). Stalls that end before the
    cut (TCP's warm-up) do not count. ``stream`` judges one flow instead of their sum.
    A seamless failover is a zero gap; None means there was no baseline to judge by.
    """
    baseline = _baseline(intervals, cut_at, settle, stream)
    if baseline is None:
        return None
    best: tuple[float, float] | None = None  # (length, start)
    run_start: float | None = None
    run_length = 0.0
    for i in intervals:
        if i.seconds < MIN_INTERVAL:
            continue
        if _rate(i, stream) < fraction * baseline:
            if run_start is None:
                run_start, run_length = i.start, 0.0
            run_length += i.end - i.start
            if i.end > cut_at and (best is None or run_length > best[0]):
                best = (run_length, run_start)
        else:
            run_start = None
    if best is None:
        return Gap(seconds=0.0, starts_after_cut=0.0, baseline_mbit=baseline / 1e6)
    return Gap(seconds=best[0], starts_after_cut=best[1] - cut_at,
               baseline_mbit=baseline / 1e6)


@dataclass(frozen=True)
class GoodputAfterCut:
    """What a cut did to a multi-flow transfer, against the median before it."""

    baseline_mbit: float
    gap_s: float         # the sum of the flows stalled (see :func:`failover_gap`)
    flow_stall_s: float  # the worst flow stalled: hashing can hide one behind the others
    dip: float           # lowest interval after the cut / baseline
    mean_after_mbit: float


def goodput_after_cut(intervals: Sequence[Interval], cut_at: float, *,
                      fraction: float = GAP_FRACTION,
                      settle: float = 0.0) -> GoodputAfterCut | None:
    """Gap, worst flow stall, dip and mean goodput from the cut on; None without a
    baseline or without intervals after the cut."""
    gap = failover_gap(intervals, cut_at, fraction=fraction, settle=settle)
    after = [i.bits_per_second for i in intervals
             if i.seconds >= MIN_INTERVAL and i.end > cut_at]
    if gap is None or not after:
        return None
    flows = min((len(i.streams) for i in intervals), default=0)
    # A flow that carried nothing before the cut cannot stall: it counts as no stall.
    stalls = [failover_gap(intervals, cut_at, fraction=fraction, settle=settle, stream=k)
              for k in range(flows)]
    baseline = gap.baseline_mbit * 1e6
    return GoodputAfterCut(
        baseline_mbit=gap.baseline_mbit, gap_s=gap.seconds,
        flow_stall_s=max((s.seconds for s in stalls if s is not None), default=0.0),
        dip=min(after) / baseline, mean_after_mbit=statistics.fmean(after) / 1e6)


# ----- a dip between two marks (several cuts in one transfer) -------------------------------


DIP_FRACTION = 0.5  # an interval under half the flow's median is "in the dip"


@dataclass(frozen=True)
class Dip:
    """The longest stretch under ``fraction`` of the median that overlaps a window."""

    seconds: float
    starts_at: float | None  # on iperf3's clock; None when nothing dipped
    lowest_mbit: float       # the lowest full interval inside the window


def median_goodput(intervals: Sequence[Interval], *, settle: float = 1.0) -> float | None:
    """Median bits/s of the full intervals from ``settle`` on (slow start left out)."""
    rates = [i.bits_per_second for i in intervals
             if i.seconds >= MIN_INTERVAL and i.start >= settle]
    return statistics.median(rates) if rates else None


def goodput_dip(intervals: Sequence[Interval], start: float, end: float, median: float, *,
                fraction: float = DIP_FRACTION) -> Dip:
    """The longest run of consecutive intervals under ``fraction * median`` that overlaps
    ``[start, end)`` (iperf3's clock), counted whole even if it began a little earlier.

    With several cuts in one transfer, give each cut the window up to the next one, so a
    dip is charged to the cut it followed.
    """
    best = 0.0
    best_start: float | None = None
    run_start: float | None = None
    run_length = 0.0
    overlaps = False
    full = [i for i in intervals if i.seconds >= MIN_INTERVAL]
    for i in full:
        if i.bits_per_second < fraction * median:
            if run_start is None:
                run_start, run_length, overlaps = i.start, 0.0, False
            run_length += i.end - i.start
            overlaps = overlaps or (i.end > start and i.start < end)
            if overlaps and run_length > best:
                best, best_start = run_length, run_start
        else:
            run_start = None
    inside = [i.bits_per_second for i in full if i.end > start and i.start < end]
    return Dip(seconds=round(best, 3), starts_at=best_start,
               lowest_mbit=min(inside) / 1e6 if inside else 0.0)


# ----- one event's figures, as the failover bench reports them ------------------------------


SETTLE = 1.0  # iperf3 intervals before this are slow start: never part of a reference


@dataclass(frozen=True)
class Marks:
    """Wall-clock moments of one run (``time.time()``, shared by every namespace)."""

    launched: float     # iperf3 started
    event: float        # just before the cut
    cut_done: float
    restore_start: float
    restored: float     # the restore command has returned: the link is whole again


def _ms_after(sample: Sample | None, since: float) -> float | None:
    return None if sample is None else round((sample.t - since) * 1000, 1)


def path_timings(samples: Mapping[str, Sequence[Sample]],
                 logs: Mapping[str, Sequence[tuple[float, str]]],
                 path_id: int, marks: Marks) -> dict[str, Any]:
    """Leave (from the event) and rejoin (from the restore) per end, in ms: as the polled
    status showed it (an upper bound, ``poll_resolution_ms`` coarse) and as the end's log
    line stamped it (the moment its core decided, 1 ms coarse)."""
    out: dict[str, Any] = {}
    resolution = 0.0
    for role in ("client", "server"):
        moves = leave_and_rejoin(samples[role], lambda s: path_id in s.up_paths,
                                 marks.event, marks.restored)
        resolution = max(resolution, moves.resolution)
        for name, seen, since, state in (("leave", moves.left, marks.event, "down"),
                                         ("rejoin", moves.rejoined, marks.restored, "up")):
            out[f"{name}_{role}_ms"] = _ms_after(seen, since)
            logged = next((t for t, what in logs[role] if t >= since - 0.001 and what == state),
                          None)
            out[f"{name}_{role}_log_ms"] = (None if logged is None
                                            else round((logged - since) * 1000, 1))
    out["poll_resolution_ms"] = round(resolution * 1000, 1)
    return out


def goodput_analysis(intervals: Sequence[Interval], event_at: float,
                     skew: float = 0.0) -> dict[str, Any]:
    """Gap, dip and per-flow stall from the event on, rounded for the table and JSON.

    ``event_at`` is the event on the launch clock; on iperf3's own clock it lies up to
    ``skew`` earlier, so the reference (median interval from ``SETTLE``, slow start over)
    ends ``skew`` before it, and the analysis starts there too.
    """
    found = goodput_after_cut(intervals, event_at - max(0.0, skew), fraction=GAP_FRACTION,
                              settle=SETTLE)
    if found is None:
        return {"median_before_mbit": None, "gap_s": None, "dip": None, "flow_stall_s": None}
    return {"median_before_mbit": round(found.baseline_mbit, 2),
            "gap_s": round(found.gap_s, 2), "dip": round(found.dip, 3),
            "flow_stall_s": round(found.flow_stall_s, 2),
            "mean_after_mbit": round(found.mean_after_mbit, 2)}


def goodput_by_wan(samples: Sequence[Sample], origin: float,
                   bucket: float = 0.5) -> dict[str, list[tuple[float, float]]]:
    """Received Mbit/s per WAN in ``bucket``-second steps from ``origin`` (poller clock):
    the per-path picture of a transfer, for plots.  Counters that go backwards (a path's
    new session) count as a restart from zero."""
    wans = sorted({wan for sample in samples for wan in sample.rx_by_wan})
    series: dict[str, list[tuple[float, float]]] = {wan: [] for wan in wans}
    if len(samples) < 2:
        return {}
    start = samples[0]
    slot_end = start.t + bucket
    last = start.rx_by_wan
    got: dict[str, int] = {}
    for sample in samples[1:]:
        now = sample.rx_by_wan
        for wan, value in now.items():
            delta = value - last.get(wan, 0)
            got[wan] = got.get(wan, 0) + (value if delta < 0 else delta)
        last = now
        if sample.t >= slot_end:
            width = sample.t - (slot_end - bucket)
            for wan in wans:
                series[wan].append(
                    (round(slot_end - bucket - origin, 2), got.get(wan, 0) * 8 / width / 1e6))
            got = {}
            slot_end = sample.t + bucket
    return series
