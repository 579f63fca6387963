"""The suite's own guard: root tests are skipped on a laptop but never silently under CI."""

from __future__ import annotations

from typing import Any

import pytest

from tests import conftest


class FakeItem:
    def __init__(self, *keywords: str) -> None:
        self.keywords = dict.fromkeys(keywords, True)
        self.markers: list[Any] = []

    def add_marker(self, marker: Any) -> None:
        self.markers.append(marker)


def test_without_root_root_tests_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    root, plain = FakeItem("root"), FakeItem()
    conftest.pytest_collection_modifyitems([root, plain])  # type: ignore[list-item]
    assert [m.name for m in root.markers] == ["skip"] and plain.markers == []


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_under_ci_without_root_the_run_fails(monkeypatch: pytest.MonkeyPatch,
                                             value: str) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.UsageError, match="1 tests need root"):
        conftest.pytest_collection_modifyitems([FakeItem("root"), FakeItem()])  # type: ignore[list-item]


def test_as_root_nothing_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setenv("CI", "true")
    item = FakeItem("root")
    conftest.pytest_collection_modifyitems([item])  # type: ignore[list-item]
    assert item.markers == []
