"""The suite cleans up after itself even when it is stopped or a test hangs.

A CI job that times out sends SIGTERM; a hung test is failed by pytest-timeout.  Either
way the test's fixtures must still run their teardown, so no namespace and no emulator
outlives the run.  Each case runs a child pytest on a small test that builds a lab and
then blocks, stops it the way CI would, and looks for what the lab made.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ratbond.lab.netns import TAG_ENV, list_namespaces
from ratbond.lab.state import RUN_DIR

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]

HANGING = Path(__file__).with_name("hang_with_lab.py")


def _run_child(tag: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, TAG_ENV: tag}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(HANGING),
         *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_lab(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        if line.startswith("LAB-UP"):
            return line.split()[1]
    child.kill()
    raise AssertionError("the child run never built its lab")


@pytest.mark.parametrize("how", ["sigterm", "timeout"])
def test_a_stopped_or_hung_run_removes_its_lab(how: str) -> None:
    tag = f"rz{os.getpid() % 1000}{how[0]}"
    extra = ("--timeout=8",) if how == "timeout" else ()
    child = _run_child(tag, *extra)
    try:
        prefix = _wait_for_lab(child)
        assert list_namespaces(prefix), "the lab's namespaces exist while the test runs"
        if how == "sigterm":
            child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0, out  # interrupted or failed, never a pass
    assert list_namespaces(tag) == [], f"namespaces left behind:\n{out[-2000:]}"
    # Its state file (which names the emulators' pids) went with it: Lab.down() ran.
    assert not (RUN_DIR / f"{prefix.rstrip('-')}.json").exists()
