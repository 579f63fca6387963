"""Shared helpers for the crypto tests: a client and a server joined by a hand-driven network.

Nothing here is a test; it lives under a ``test_crypto*`` name to stay in the crypto files.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from ratbond.crypto import (
    DEFAULT_LIMITS,
    ChannelConfig,
    ChannelEvent,
    ChannelMode,
    ClientChannel,
    Limits,
    ServerChannel,
)

PSK = bytes(range(32))
OTHER_PSK = bytes(range(1, 33))
WALL_EPOCH = 1_800_000_000.0
CLIENT_ADDR = ("192.0.2.1", 40000)
SECURE_MODES = (ChannelMode.AUTHENTICATED, ChannelMode.ENCRYPTED)
CIPHERS = ("chacha20-poly1305", "aes-256-gcm")


def make_config(
    mode: ChannelMode, cipher: str = "chacha20-poly1305", psk: bytes = PSK
) -> ChannelConfig:
    return ChannelConfig(mode, None if mode is ChannelMode.PLAINTEXT else psk, cipher)


def seeded(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for ``os.urandom``."""
    return random.Random(seed).randbytes


class Pair:
    """A client and a server under one fake clock; the test moves every datagram by hand."""

    def __init__(
        self,
        client_config: ChannelConfig,
        server_config: ChannelConfig | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        seed: int = 1,
        server: ServerChannel | None = None,
        client_id: bytes | None = None,
    ) -> None:
        self.now = 0.0
        self.clock_offset = 0.0  # client wall clock minus server wall clock
        self.client = ClientChannel(
            client_config, random=seeded(seed), limits=limits, client_id=client_id
        )
        self.server = server or ServerChannel(
            server_config or client_config, random=seeded(seed + 1000), limits=limits
        )
        self.client_events: list[ChannelEvent] = []
        self.server_events: list[ChannelEvent] = []
        self.paths: tuple[int, ...] = (1,)
        self.addr = CLIENT_ADDR

    @property
    def wall(self) -> float:
        return WALL_EPOCH + self.now

    def drain_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def connect(self) -> None:
        self.client.connect(self.now, self.wall + self.clock_offset)
        self.exchange_initiations()

    def exchange_initiations(self, paths: Iterable[int] | None = None) -> int:
        """Send the pending initiation on ``paths`` and deliver every answer; returns how many
        answers the server sent."""
        initiations = [self.client.initiation_for_path(path) for path in paths or self.paths]
        for datagram in initiations:
            if datagram is not None:
                self.server.receive_datagram(datagram, self.addr, self.now, self.wall)
        answers = 0
        for reply, addr in self.server.datagrams_to_send():
            assert addr == self.addr
            answers += 1
            self.client.receive_datagram(reply, self.now)
        self.drain_events()
        return answers

    def establish(self) -> int:
        """Handshake plus the first DATA that confirms it; returns the logical session."""
        self.connect()
        assert self.client.established
        self.c2s(self.paths[0], b"confirm")
        session = self.client.session
        assert session is not None and session in self.server.sessions
        return session

    def c2s(self, path: int, payload: bytes, addr: tuple[str, int] | None = None
            ) -> tuple[int, int, bytes] | None:
        datagram = self.client.seal(path, payload, self.now)
        result = self.server.receive_datagram(datagram, addr or self.addr, self.now, self.wall)
        self.drain_events()
        return result

    def s2c(self, path: int, payload: bytes) -> tuple[int, bytes] | None:
        session = self.client.session
        assert session is not None
        datagram = self.server.seal(session, path, payload, self.now)
        result = self.client.receive_datagram(datagram, self.now)
        self.drain_events()
        return result

    def advance(self, seconds: float, *, deliver_initiations: bool = True) -> None:
        """Move the clock, fire due timers, and (by default) carry new initiations over."""
        self.now += seconds
        for _ in range(100):
            fired = False
            timer = self.client.get_timer()
            if timer is not None and timer <= self.now:
                self.client.handle_timer(self.now, self.wall + self.clock_offset)
                fired = True
            timer = self.server.get_timer()
            if timer is not None and timer <= self.now:
                self.server.handle_timer(self.now)
                fired = True
            if not fired:
                break
        else:
            raise AssertionError("timers keep firing without the deadline moving")
        self.drain_events()
        if deliver_initiations:
            self.exchange_initiations()
