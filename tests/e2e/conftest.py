"""Fixtures for end-to-end tests: a ``lab`` factory that always tears its labs down."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab

LabFactory = Callable[..., Lab]


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
