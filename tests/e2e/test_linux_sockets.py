"""Path and listen sockets; path sockets leave through their own device only.

Namespace tests (root):

    ns "a" (client)                         ns "b" (peer)
    wan1 10.1.0.2/24  ----veth----  wan1p 10.1.0.1/24
    wan2 10.2.0.2/24  ----veth----  wan2p 10.2.0.1/24      lo: 10.9.9.9/32 (the "server")
    main: default via 10.1.0.1 dev wan1   (stands in for the tunnel's default route)
    table 102: default via 10.2.0.1 dev wan2, rule from 10.2.0.2 lookup 102
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ratbond.lab.netns import Namespace, namespace_group, stop_process
from ratbond.linux.sockets import drain_datagrams, open_listen_socket, open_path_socket
from tests.e2e.linux_child import REPO, child_argv, run_in

PORT = "40123"
SINK_SECONDS = 10.0  # upper bound only: a sink returns as soon as what was sent arrived
LOOP4 = ipaddress.IPv4Address("127.0.0.1")


# -- loopback only, no root --------------------------------------------------------------


def test_drain_stops_at_max_then_at_eagain() -> None:
    with open_path_socket(LOOP4, None) as rx, open_path_socket(LOOP4, None) as tx:
        for i in range(10):
            tx.sendto(bytes([i]), rx.getsockname())
        first = drain_datagrams(rx, max_datagrams=4)
        rest = drain_datagrams(rx)
        assert [d for d, _ in first + rest] == [bytes([i]) for i in range(10)]
        assert len(first) == 4
        assert {a for _, a in first + rest} == {tx.getsockname()}
        assert drain_datagrams(rx) == []  # non-blocking: empty queue returns at once


def test_listen_socket_dual_stack_accepts_ipv4_and_ipv6() -> None:
    with open_listen_socket("::", 0) as srv:
        port = srv.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4, \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6:
            v4.sendto(b"four", ("127.0.0.1", port))
            v6.sendto(b"six", ("::1", port))
            deadline = time.monotonic() + 2.0
            got: list[tuple[bytes, tuple[Any, ...]]] = []
            while len(got) < 2 and time.monotonic() < deadline:
                got += drain_datagrams(srv)
    assert sorted((d, a[0]) for d, a in got) == [(b"four", "::ffff:127.0.0.1"), (b"six", "::1")]


def test_listen_socket_specific_ipv4_address() -> None:
    with open_listen_socket("127.0.0.1", 0) as srv:
        assert srv.family == socket.AF_INET
        assert srv.getsockname()[0] == "127.0.0.1"
        assert srv.getblocking() is False


@pytest.mark.root
def test_buffers_forced_past_the_sysctl_limit_as_root() -> None:
    with open_path_socket(LOOP4, None, buffer_bytes=8 << 20) as sock:
        # The kernel doubles the value for its bookkeeping; rmem_max defaults far lower.
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 16 << 20
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 16 << 20


# -- in namespaces ------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    with namespace_group() as group:
        a, b = group.add("a"), group.add("b")
        for n in ("1", "2"):
            a.run("ip", "link", "add", f"wan{n}", "type", "veth", "peer", "name", f"wan{n}p",
                  "netns", b.name)
            a.run("ip", "addr", "add", f"10.{n}.0.2/24", "dev", f"wan{n}")
            a.run("ip", "link", "set", f"wan{n}", "up")
            b.run("ip", "addr", "add", f"10.{n}.0.1/24", "dev", f"wan{n}p")
            b.run("ip", "link", "set", f"wan{n}p", "up")
        b.run("ip", "addr", "add", "10.9.9.9/32", "dev", "lo")
        b.run("ip", "route", "add", "10.0.0.0/8", "via", "10.1.0.2")
        a.run("ip", "route", "add", "default", "via", "10.1.0.1", "dev", "wan1")
        a.run("ip", "route", "add", "default", "via", "10.2.0.1", "dev", "wan2", "table", "102")
        a.run("ip", "rule", "add", "from", "10.2.0.2", "lookup", "102", "pref", "10000")
        yield a, b


def _sink_lines(b: Namespace, send: Any, expect: int = 3
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a sink in ``b``, call ``send``, return what it returned and the datagrams seen.

    Returns as soon as ``expect`` datagrams arrived (the sender sends that many); the
    sink's own lifetime is only the upper bound for a datagram that never comes.
    """
    # Unbuffered, so select() sees every line the sink writes (no line hides in a buffer).
    proc = b.popen(*child_argv("udp_sink", PORT, str(SINK_SECONDS)), cwd=REPO,
                   stdout=subprocess.PIPE, bufsize=0)
    got: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["kind"] == "ready"
        sent = send()
        deadline = time.monotonic() + SINK_SECONDS
        while len(got) < expect and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:  # the sink ended
                break
            record = json.loads(line)
            if record["kind"] == "datagram":
                got.append(record)
    finally:
        stop_process(proc)
    return sent, got


@pytest.mark.root
def test_path_socket_uses_its_device_and_source(pair: tuple[Namespace, Namespace]) -> None:
    a, b = pair
    sent, got = _sink_lines(b, lambda: run_in(a, "path_send", "10.2.0.2", "wan2", "10.9.9.9",
                                              PORT, "via-wan2"))
    assert sent == {"errors": [], "bound": "10.2.0.2", "device": "wan2"}
    assert [(g["dev"], g["src"], g["data"]) for g in got] == [("wan2p", "10.2.0.2", "via-wan2")] * 3


@pytest.mark.root
def test_path_socket_never_falls_back_to_the_main_default(
        pair: tuple[Namespace, Namespace]) -> None:
    a, b = pair
    # The WAN's own default route flaps away: the only default left is main's (the "tunnel").
    a.run("ip", "route", "del", "default", "table", "102")
    sent, got = _sink_lines(b, lambda: run_in(a, "path_send", "10.2.0.2", "wan2", "10.9.9.9",
                                              PORT, "leak?"))
    # The device binding wins over the main table: the kernel treats the destination as
    # on-link on wan2 (ARP there) instead of following main's default out of wan1.
    assert sent["errors"] == []
    assert [g["dev"] for g in got] == ["wan2p"] * 3
