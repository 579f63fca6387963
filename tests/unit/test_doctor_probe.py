"""The doctor's handshake probe against a real server channel on a loopback UDP socket:
each answer the server can give becomes the right verdict, and no session is opened."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from ratbond.crypto import ChannelConfig, Limits, Secret, ServerChannel
from ratbond.doctor_probe import ProbeResult, probe_server

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass
class LoopbackServer:
    """A ServerChannel answering on 127.0.0.1 from a thread, until closed."""

    channel: ServerChannel
    clock_offset: float = 0.0
    answer: bool = True
    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET,
                                                                      socket.SOCK_DGRAM))
    received: int = 0

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return str(host), int(port)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received += 1
            if not self.answer:
                continue
            self.channel.receive_datagram(data, addr, time.monotonic(),
                                          time.time() + self.clock_offset)
            for reply, to in self.channel.datagrams_to_send():
                self.sock.sendto(reply, to)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def config(secret: str, *, tunnel: bytes | None = None) -> ChannelConfig:
    base = ChannelConfig.from_options(aes=True, secret=Secret(secret.encode()))
    if tunnel is None:
        return base
    return ChannelConfig(base.mode, base.psk, base.cipher, tunnel)


@pytest.fixture(scope="module")
def right() -> ChannelConfig:
    return config("doctor-probe-secret")  # stretching is slow: once per module


@contextmanager
def serving(server_config: ChannelConfig, **kwargs: object) -> Iterator[LoopbackServer]:
    limits = kwargs.pop("limits", None)
    channel = (ServerChannel(server_config) if limits is None
               else ServerChannel(server_config, limits=limits))  # type: ignore[arg-type]
    server = LoopbackServer(channel, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


def probe(client: ChannelConfig, server: tuple[str, int], timeout: float = 1.5
          ) -> ProbeResult:
    return probe_server(client, local=LOOPBACK, device=None, server=server, timeout=timeout)


def test_same_settings_are_accepted_and_no_session_is_opened(right: ChannelConfig) -> None:
    with serving(right) as server:
        result = probe(right, server.address)
        assert result.outcome == "accepted", result
        assert result.rtt is not None and 0 <= result.rtt < 1.5
        assert not result.clock_skewed
        assert server.channel.sessions == ()  # the keys were never confirmed


def test_another_secret_is_refused_with_the_reason(right: ChannelConfig) -> None:
    with serving(right) as server:
        result = probe(config("another-secret"), server.address)
    assert result.outcome == "refused"
    assert "--secret differs" in result.detail


def test_another_tunnel_subnet_is_refused_naming_it(right: ChannelConfig) -> None:
    other = ChannelConfig(right.mode, right.psk, right.cipher, bytes([1]) * len(right.tunnel_info))
    with serving(right) as server:
        result = probe(other, server.address)
    assert result.outcome == "refused" and "tunnel addressing differs" in result.detail


def test_a_clock_far_off_is_told_apart(right: ChannelConfig) -> None:
    with serving(right, clock_offset=1000.0) as server:
        result = probe(right, server.address)
    assert result.outcome == "refused" and result.clock_skewed
    assert "fix NTP" in result.detail


def test_a_server_under_load_costs_a_cookie_round_then_answers(right: ChannelConfig) -> None:
    with serving(right, limits=Limits(cookie_threshold=0)) as server:
        result = probe(right, server.address)
    assert result.outcome == "accepted" and result.cookie, result


def test_silence_and_a_closed_port_are_different_verdicts(right: ChannelConfig) -> None:
    with serving(right, answer=False) as server:
        started = time.monotonic()
        result = probe(right, server.address, timeout=0.6)
        assert result.outcome == "silent"
        assert 0.6 <= time.monotonic() - started < 1.5
        assert server.received >= 2  # resent within the timeout
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: the kernel answers ICMP port unreachable
    assert probe(right, ("127.0.0.1", port), timeout=0.6).outcome == "unreachable"
