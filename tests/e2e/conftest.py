"""Fixtures for end-to-end tests: a ``lab`` factory that always tears its labs down, and a
final check that the whole run left no namespace behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ratbond.lab.netns import TAG_ENV, NetnsError, delete_all, list_namespaces
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from tests.e2e.browser import chrome
from tests.e2e.tunnel_util import LabFactory


@pytest.fixture
def lab() -> Iterator[LabFactory]:
    """``lab(links=["20:20ms", ...])`` (LinkSpec or short-form strings) -> a running Lab.

    Every lab made through the factory is removed when the test ends, passed or failed.
    """
    made: list[Lab] = []

    def factory(links: Sequence[LinkSpec | str], *, name: str | None = None) -> Lab:
        specs = [s if isinstance(s, LinkSpec) else LinkSpec.parse(s) for s in links]
        made.append(Lab.up(specs, name=name))
        return made[-1]

    try:
        yield factory
    finally:
        for built in reversed(made):
            built.down()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """The suite's last check, as in WireGuard's netns.sh: every namespace an end-to-end test
    created is gone when the run ends.  Leftovers are removed, then reported as an error.

    The run tags its namespaces (``RATBOND_NETNS_TAG``, inherited by every child it starts),
    so a second test run or a lab on the same machine is neither reported nor removed."""
    tag = os.environ.setdefault(TAG_ENV, "rt" + secrets.token_hex(2))
    before = set(list_namespaces(tag))
    yield
    left = sorted(set(list_namespaces(tag)) - before)
    for name in left:
        with contextlib.suppress(NetnsError, OSError):
            delete_all(name)
    assert not left, f"end-to-end tests left network namespaces behind: {left}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (tests/e2e/browser.py) for one test, quit afterwards."""
    driver = chrome(str(tmp_path / "profile"))
    try:
        yield driver
    finally:
        driver.quit()
