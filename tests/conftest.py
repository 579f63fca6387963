"""Shared test configuration: tests marked ``root`` need root and network namespaces.

Without root they are skipped on a developer's machine, but under CI (``CI`` set) the run
fails instead: a CI that silently skipped every end-to-end test would look green while
testing nothing of the tunnel.

A run that is told to stop (SIGTERM, as a CI job's timeout or ``kill`` sends) stops like
Ctrl-C: the running test is interrupted and every fixture's teardown runs, so the labs it
made are removed instead of left behind (pytest-timeout does the same for a hung test).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

import pytest


def _stop_like_ctrl_c(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}: stopping; tearing down what the tests made")


def pytest_configure() -> None:
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    needs_root = [item for item in items if "root" in item.keywords]
    if needs_root and _under_ci():
        raise pytest.UsageError(
            f"CI is set but this run is not root: {len(needs_root)} tests need root and network "
            "namespaces; run the suite as root (CI does) or unset CI to skip them")
    skip = pytest.mark.skip(reason="needs root for network namespaces (CI runs as root)")
    for item in needs_root:
        item.add_marker(skip)
