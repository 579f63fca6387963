"""``ratbond demo``: the whole show end to end, its clean exit on Ctrl-C, its report lines.

The end-to-end tests run the demo as a user would (a subprocess, short measurements) and
check the report a person reads, the figures it writes with ``--json``, and that nothing it
made is left: no namespace with its prefix, no lab record, no ratbond process, no secret.
The failover arithmetic they rely on is tested without root in
``tests/unit/test_lab_failover.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ratbond.lab.bonded import wait_until
from ratbond.lab.demo import _failover_line
from ratbond.lab.netns import list_namespaces
from ratbond.lab.state import state_path

SRC = Path(__file__).resolve().parents[2] / "src"


def _demo(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``ratbond demo`` from this checkout, whatever the installed copy is."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-m", "ratbond", "demo", *args], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **kwargs)


def _nothing_left(prefix: str, name: str, workdir: str | None) -> None:
    assert list_namespaces(prefix) == []
    assert not state_path(name).exists()
    assert not (state_path(name).parent / name).exists()
    if workdir is not None:
        assert not Path(workdir).exists()
        assert _processes_naming(workdir) == [], "a process of the demo survived"


def _processes_naming(text: str) -> list[str]:
    """Command lines of the running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no {pattern!r} in the report:\n{text}"
    return float(match.group(1))


# ----- end to end (root) ----------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_demo_reports_links_bond_and_failover_and_leaves_nothing(tmp_path: Path) -> None:
    figures_path = tmp_path / "demo.json"
    proc = _demo("--seconds", "1", "--json", str(figures_path))
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, f"{out}\n{err}"
    figures = json.loads(figures_path.read_text())

    # The report a person reads: every section, with figures in it.
    report = out[out.index("tearing everything down"):]
    for heading in ("Per-link raw TCP goodput", "Bonded through the tunnel",
                    "--balance-roundrobin", "Failover"):
        assert heading in report, report
    for i in (1, 2, 3):
        assert _number(rf"wan{i} +\S+ +([\d.]+) \(", report) > 0
    assert _number(r"8 flows down +([\d.]+) Mbit/s", report) > 0
    assert _number(r"8 flows up +([\d.]+) Mbit/s", report) > 0
    assert _number(r"1 flow down +([\d.]+) Mbit/s", report) > 0
    assert _number(r"1 flow up +([\d.]+) Mbit/s", report) > 0
    assert _number(r"RTT via the tunnel ([\d.]+) ms", report) > 0
    assert len(re.findall(r"gap [\d.]+ s, path left the bond after [\d.]+ s, "
                          r"rejoined [\d.]+ s after the restore", report)) == 2, report
    assert "nothing was left behind" in report
    # The report ends with a picture of per-path goodput over the failover downloads.
    plot = figures_path.with_suffix(".png")
    assert f"per-path goodput over time: {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    # The same figures as data, within what the emulated links allow.
    links, bond = figures["links"], figures["bond"]
    assert [round(f["rtt_ms"] / 40) for f in links] == [1, 2, 3]  # 20/40/60 ms one way
    link_sum = sum(f["down_mbit"] for f in links)
    assert 0 < bond["down_mbit"] < 1.1 * link_sum
    assert bond["up_mbit"] > 0 and bond["down_1flow_mbit"] > 0 and bond["up_1flow_mbit"] > 0
    assert bond["rtt_ms"] > min(f["rtt_ms"] for f in links)
    assert figures["roundrobin"]["down_mbit"] > 0 and figures["roundrobin"]["up_mbit"] > 0
    runs = {run["kind"]: run for run in figures["failover"]}
    assert set(runs) == {"blackhole", "wan-down"}
    for run in runs.values():
        assert run["gap_s"] is not None and run["gap_s"] >= 0
        assert run["baseline_mbit"] > 0
        assert run["rejoined_after_s"] is not None and run["rejoined_after_s"] < 3
    # A silent link leaves only when the liveness timer says so; a link going down at once.
    dead_after = figures["tunnel"]["dead_after_s"]
    assert dead_after - 0.5 < runs["blackhole"]["left_after_s"] < dead_after + 1.5
    assert runs["wan-down"]["left_after_s"] < 1.0

    lab = figures["lab"]
    _nothing_left(lab["prefix"], lab["name"], figures["tunnel"]["workdir"])


@pytest.mark.root
@pytest.mark.slow
def test_ctrl_c_while_the_tunnel_runs_removes_everything() -> None:
    proc = _demo("--seconds", "1")
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[4/"):  # the tunnel is up and measuring
                break
        made = re.search(r"secret made for this run in (\S+)/secret", "".join(lines))
        assert made, "".join(lines)
        running = made.group(1)
        # Ctrl-C must land while both ratbond ends run: wait until they are seen running.
        wait_until(lambda: len(_processes_naming(running)) >= 2, 20,
                   interval=0.05, what="ratbond server and client running")
        os.killpg(proc.pid, signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    text = "".join(lines) + rest
    assert proc.returncode == 130, f"{text}\n{err}"
    assert "tearing everything down" in text
    prefix = re.search(r"namespaces (\S+)\*", text)
    name = re.search(r"lab '([^']+)'", text)
    workdir = re.search(r"secret made for this run in (\S+)/secret", text)
    assert prefix and name and workdir, text
    _nothing_left(prefix.group(1), name.group(1), workdir.group(1))


# ----- report lines (no root) ----------------------------------------------------------------


def test_failover_line_says_never_when_a_path_did_not_move() -> None:
    line = _failover_line({"kind": "blackhole", "wan": "wan2", "gap_s": None,
                           "left_after_s": None, "rejoined_after_s": 0.25})
    assert line.startswith("wan2 blackholed")
    assert "gap n/a" in line and "left the bond never" in line
    assert "rejoined 0.2 s after the restore" in line
