"""DefaultRouteManager against a real kernel: idempotent add and remove, no clobbering."""

from __future__ import annotations

import pytest

from ratbond.lab.bonded import CLIENT_TUNNEL_IP, SERVER_TUNNEL_IP
from ratbond.lab.netns import namespace_group
from tests.e2e.linux_child import run_in

pytestmark = pytest.mark.root


def test_default_route_add_remove_idempotent() -> None:
    with namespace_group() as group:
        ns = group.add("rt")
        # A veth stands in for the TUN (no dummy module here): a device and a gateway suffice.
        ns.run("ip", "link", "add", "tunx", "type", "veth", "peer", "name", "tunxp")
        ns.run("ip", "link", "set", "tunxp", "up")
        ns.run("ip", "addr", "add", f"{CLIENT_TUNNEL_IP}/30", "dev", "tunx")
        ns.run("ip", "link", "set", "tunx", "up")
        steps = run_in(ns, "route_manager", "tunx", SERVER_TUNNEL_IP, "254")
    for step in ("add1", "add2"):
        assert [(r["dst"], r["gateway"], r["dev"]) for r in steps[step]] == [
            ("default", SERVER_TUNNEL_IP, "tunx")]
    assert steps["del1"] == []
    assert steps["del2"] == []
    # Another default route in the table: it is left alone, and two /1 routes win instead.
    assert steps["mode"] == "split" and steps["present"] is True
    assert [r["dev"] for r in steps["after_conflict"]] == ["lo"]
    assert sorted((r["dst"], r.get("gateway"), r["dev"]) for r in steps["split"]
                  if r["dst"] != "10.10.10.0/30") == [
        ("0.0.0.0/1", SERVER_TUNNEL_IP, "tunx"), ("128.0.0.0/1", SERVER_TUNNEL_IP, "tunx"),
        ("default", None, "lo")]
    assert [(r["dst"], r["dev"]) for r in steps["after_removal"]
            if r["dst"] != "10.10.10.0/30"] == [("default", "lo")]
    # A half route of somebody else's as well: nothing is installed, and the error says why.
    assert steps["conflict"] is not None and "another route to 0.0.0.0/1" in steps["conflict"]
