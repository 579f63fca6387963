"""Helpers every benchmark shares: iperf3 between namespaces, RTT probes, result files.

Measurements go only between namespaces the benchmark's lab created; the measuring code
lives in :mod:`ratbond.lab.measure` (shared with ``ratbond demo`` and the tests) and is
re-exported here. Results land in ``bench/results/<name>.json`` (+ ``.png`` when
matplotlib is installed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ratbond.lab.measure import (
    MeasureError,
    free_port,
    iperf3,
    iperf3_client,
    iperf3_server,
    ping_rtt,
)

__all__ = ["RESULTS_DIR", "MeasureError", "free_port", "iperf3", "iperf3_client",
           "iperf3_server", "mbit", "ping_rtt", "write_bar_plot", "write_result"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_result(name: str, data: Any) -> Path:
    """Write ``bench/results/<name>.json`` (raw iperf3 JSON stripped) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(_strip_raw(data), indent=2, sort_keys=True) + "\n")
    return path


def _strip_raw(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip_raw(v) for k, v in data.items() if k != "raw"}
    if isinstance(data, list):
        return [_strip_raw(v) for v in data]
    return data


def write_bar_plot(name: str, title: str, labels: Sequence[str],
                   series: Mapping[str, Sequence[float]], ylabel: str, *,
                   log: bool = False) -> Path | None:
    """A grouped bar chart ``bench/results/<name>.png``; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(max(8, len(labels) * 1.4), 4.5))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values, width, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = RESULTS_DIR / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mbit(bits_per_second: float) -> float:
    return round(bits_per_second / 1e6, 2)
