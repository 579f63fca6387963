"""Shared test configuration: tests marked ``root`` need root and network namespaces.

Without root they are skipped on a developer's machine, but under CI (``CI`` set) the run
fails instead: a CI that silently skipped every end-to-end test would look green while
testing nothing of the tunnel.
"""

from __future__ import annotations

import os

import pytest


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
