"""TunDevice in a namespace: create, configure, a datagram both ways, gone after close."""

from __future__ import annotations

import pytest

from ratbond.lab.netns import list_namespaces, namespace_group
from tests.e2e.linux_child import run_in

pytestmark = pytest.mark.root


def test_tun_open_configure_ping_and_close() -> None:
    with namespace_group() as group:
        prefix = group.prefix
        ns = group.add("tun")
        result = run_in(ns, "tun_check")
    assert result["name"].startswith("rbtun")
    assert result["mtu"] == 1380
    assert result["up"] is True
    assert [a for a in result["addrs"] if not a.startswith("fe80:")] == [
        "10.99.0.1/30", "fd00:99::1/64"]
    assert result["empty_read"] == []  # non-blocking: nothing queued, no wait
    assert result["answered"] is True
    assert result["echo"] == ["olleh", "10.99.0.2", 9999]  # our reply came back in
    assert result["bad_write"] is False  # a malformed packet is refused, not raised
    assert result["write_errors"] == 1
    assert result["gone"] is True  # not persistent: closing the fd removed the device
    assert list_namespaces(prefix) == []
