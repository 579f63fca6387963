"""A client and a server *connection* joined by simulated links under one fake clock.

The whole of each end runs -- channel, bond, session policy -- exactly as the shells drive
it, only the sockets are replaced: each client path is a link with its own delay, loss
and blackhole per direction, and the server sees each path's datagrams come from the
path's current "public" address (change it to emulate NAT rebinding or a new lease).
The server can be taken away (``server_reachable = False``: nothing reaches it or leaves
it, its clock still running) or replaced by a fresh one (a restart).  Deterministic for a
given seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ratbond.bond import BondConfig
from ratbond.connection import (
    Address,
    ClientConnection,
    ConnectionConfig,
    ConnectionEvent,
    ServerConnection,
)
from ratbond.crypto import DEFAULT_LIMITS, ChannelConfig, ChannelMode, Limits

PSK = bytes(range(32))
WALL_EPOCH = 1_800_000_000.0
_MAX_STEPS_PER_INSTANT = 10_000
E = TypeVar("E")


def channel(mode: ChannelMode = ChannelMode.ENCRYPTED, cipher: str = "chacha20-poly1305",
            psk: bytes = PSK, tunnel_info: bytes | None = None) -> ChannelConfig:
    psk_or_none = None if mode is ChannelMode.PLAINTEXT else psk
    if tunnel_info is None:
        return ChannelConfig(mode, psk_or_none, cipher)
    return ChannelConfig(mode, psk_or_none, cipher, tunnel_info)


def config(mode: ChannelMode = ChannelMode.ENCRYPTED, *, limits: Limits = DEFAULT_LIMITS,
           cipher: str = "chacha20-poly1305", psk: bytes = PSK,
           tunnel_info: bytes | None = None, **bond: object) -> ConnectionConfig:
    """Both ends' settings as the shells build them (the pure KCP engine: deterministic)."""
    options: dict[str, object] = {"hello_interval": 0.5, "dead_after": 2.0, "kcp_engine": "python"}
    options.update(bond)
    return ConnectionConfig(channel(mode, cipher, psk, tunnel_info),
                            BondConfig(**options),  # type: ignore[arg-type]
                            limits)


def seeded(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@dataclass
class Link:
    """One client path: delays and loss per direction, a blackhole, its public address."""

    address: Address
    delay: float = 0.01
    loss: float = 0.0
    blackhole: bool = False
    sent: int = 0
    delivered: int = 0


@dataclass
class End:
    """What came out of one end: packets for its TUN and its events, with times."""

    packets: list[bytes] = field(default_factory=list)
    events: list[tuple[float, ConnectionEvent]] = field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        return [event for _, event in self.events if isinstance(event, kind)]

    def times(self, kind: type) -> list[float]:
        return [when for when, event in self.events if isinstance(event, kind)]


class _Simulation:
    """The clock stepping both simulations share: move output into the links, stop when
    ``done()``, else jump to the next delivery or timer and run what is due, in
    :meth:`_ends` order."""

    now: float

    def _next_delivery(self) -> float | None:
        """When the earliest datagram in flight arrives (None: nothing in flight)."""
        raise NotImplementedError

    def _ends(self) -> tuple[ClientConnection | ServerConnection, ...]:
        raise NotImplementedError

    def pump(self) -> None:
        raise NotImplementedError

    def _deliver_due(self) -> None:
        raise NotImplementedError

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, self.now + seconds)

    def run_until(self, done: Callable[[], bool], end: float) -> bool:
        """Advance to ``end`` or until ``done()``; True if ``done()`` became true."""
        steps_at_instant = 0
        while True:
            self.pump()
            if done():
                return True
            if self.now >= end:
                return False
            due = end
            arrival = self._next_delivery()
            if arrival is not None:
                due = min(due, arrival)
            for conn in self._ends():
                timer = conn.get_timer()
                if timer is not None:
                    due = min(due, timer)
            if due > self.now:
                self.now = due
                steps_at_instant = 0
            else:
                steps_at_instant += 1
                if steps_at_instant > _MAX_STEPS_PER_INSTANT:
                    raise RuntimeError(f"simulation stuck at t={self.now}")
            self._deliver_due()
            for conn in self._ends():
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(self.now)


class ConnPair(_Simulation):
    """``client`` and ``server`` connections, their links, and the clock ``now``."""

    def __init__(self, client_config: ConnectionConfig,
                 server_config: ConnectionConfig | None = None, *, seed: int = 1,
                 client_id: bytes = b"client-1") -> None:
        self.now = 0.0
        self._seed = seed
        self._random = random.Random(seed)
        self.client_config = client_config
        self.server_config = server_config or client_config
        self.server_restarts = 0
        self.client = ClientConnection(client_config, now=0.0, wall_offset=WALL_EPOCH,
                                       client_id=client_id, random=seeded(seed))
        self.server = self._new_server()
        self.client_out = End()
        self.server_out = End()
        self.links: dict[int, Link] = {}
        self.server_reachable = True
        self._in_flight: list[tuple[float, int, bool, int, Address, bytes]] = []
        self._counter = 0

    def _new_server(self) -> ServerConnection:
        return ServerConnection(self.server_config, now=self.now, wall_offset=WALL_EPOCH,
                                random=seeded(self._seed + 1000 + self.server_restarts))

    # -- topology -----------------------------------------------------------------------

    def add_path(self, path_id: int, *, delay: float = 0.01, loss: float = 0.0) -> Link:
        link = Link((f"198.51.100.{path_id}", 40000 + path_id), delay, loss)
        self.links[path_id] = link
        self.client.add_path(path_id, self.now)
        return link

    def remove_path(self, path_id: int, reason: str = "link-down") -> None:
        self.client.remove_path(path_id, self.now, reason)
        del self.links[path_id]

    def restart_server(self) -> None:
        """The VPS rebooted: a fresh server that knows nothing, same secret."""
        self.server_restarts += 1
        self.server = self._new_server()
        self.server_out = End()

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        self.client.connect(self.now)

    def _ends(self) -> tuple[ClientConnection | ServerConnection, ...]:
        return (self.client, self.server)  # the server object changes on a restart

    def _next_delivery(self) -> float | None:
        return self._in_flight[0][0] if self._in_flight else None

    def pump(self) -> None:
        """Move both ends' output into the links; collect packets and events."""
        for path_id, datagram in self.client.datagrams_to_send(self.now):
            link = self.links.get(path_id)
            if link is None:
                raise AssertionError(f"client sent on path {path_id}, which it removed")
            self._send(True, path_id, link.address, datagram)
        for datagram, addr in self.server.datagrams_to_send(self.now):
            if not self.server_reachable:
                continue
            path_id = next((pid for pid, link in self.links.items() if link.address == addr), 0)
            self._send(False, path_id, addr, datagram)
        self.client_out.packets.extend(self.client.packets_received())
        self.server_out.packets.extend(self.server.packets_received())
        while (event := self.client.next_event()) is not None:
            self.client_out.events.append((self.now, event))
        while (event := self.server.next_event()) is not None:
            self.server_out.events.append((self.now, event))

    def _send(self, from_client: bool, path_id: int, addr: Address, datagram: bytes) -> None:
        link = self.links.get(path_id)
        if link is None:
            return  # the server answers an address no path has any more
        link.sent += 1
        if link.blackhole or (link.loss and self._random.random() < link.loss):
            return
        self._counter += 1
        heapq.heappush(self._in_flight, (self.now + link.delay, self._counter, from_client,
                                         path_id, addr, datagram))

    def _deliver_due(self) -> None:
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= self.now:
            _, _, from_client, path_id, addr, datagram = heapq.heappop(in_flight)
            link = self.links.get(path_id)
            if link is None:
                continue
            if from_client:
                if not self.server_reachable:
                    continue
                link.delivered += 1
                # The server sees the path's *current* public address.
                self.server.receive_datagram(datagram, link.address, self.now)
            else:
                if addr != link.address:
                    continue  # sent to an address the path no longer has: lost
                link.delivered += 1
                self.client.receive_datagram(datagram, self.now)


class FleetSim(_Simulation):
    """Several client connections on one server (a clients file), under one fake clock.

    Each client's paths have their own public addresses (``198.51.<client>.<path>``), so the
    server's answers find their client by address as the network would route them; links
    are lossless with a fixed delay (the single-pair :class:`ConnPair` covers loss).
    """

    def __init__(self, server: ServerConnection, clients: dict[str, ClientConnection], *,
                 delay: float = 0.01) -> None:
        self.now = 0.0
        self.server = server
        self.clients = clients
        self.delay = delay
        self.addresses: dict[Address, tuple[str, int]] = {}
        self.received: dict[str, list[bytes]] = {name: [] for name in clients}
        self.server_received: dict[str, list[bytes]] = {}
        self.server_events: list[ConnectionEvent] = []
        self.client_events: dict[str, list[ConnectionEvent]] = {name: [] for name in clients}
        self._in_flight: list[tuple[float, int, str | None, Address, bytes]] = []
        self._counter = 0

    def add_paths(self, name: str, count: int) -> None:
        index = sorted(self.clients).index(name) + 1
        for path_id in range(1, count + 1):
            self.addresses[(f"198.51.{index}.{path_id}", 40000 + path_id)] = (name, path_id)
            self.clients[name].add_path(path_id, self.now)

    def address_of(self, name: str, path_id: int) -> Address:
        return next(a for a, v in self.addresses.items() if v == (name, path_id))

    def start(self) -> None:
        for client in self.clients.values():
            client.connect(self.now)

    def _ends(self) -> tuple[ClientConnection | ServerConnection, ...]:
        return (self.server, *self.clients.values())

    def _next_delivery(self) -> float | None:
        return self._in_flight[0][0] if self._in_flight else None

    def pump(self) -> None:
        for name, client in self.clients.items():
            for path_id, datagram in client.datagrams_to_send(self.now):
                self._send(None, self.address_of(name, path_id), datagram)
            self.received[name].extend(client.packets_received())
            while (event := client.next_event()) is not None:
                self.client_events[name].append(event)
        for datagram, addr in self.server.datagrams_to_send(self.now):
            target = self.addresses.get(addr)
            if target is not None:
                self._send(target[0], addr, datagram)
        for name, packets in self.server.packets_by_client().items():
            self.server_received.setdefault(name, []).extend(packets)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def inject(self, addr: Address, datagram: bytes) -> None:
        """A datagram from ``addr`` straight to the server (a forger, a stranger)."""
        self._send(None, addr, datagram)

    def _send(self, to_client: str | None, addr: Address, datagram: bytes) -> None:
        self._counter += 1
        heapq.heappush(self._in_flight, (self.now + self.delay, self._counter, to_client,
                                         addr, datagram))

    def _deliver_due(self) -> None:
        while self._in_flight and self._in_flight[0][0] <= self.now:
            _, _, to_client, addr, datagram = heapq.heappop(self._in_flight)
            if to_client is None:
                self.server.receive_datagram(datagram, addr, self.now)
            elif to_client in self.clients:
                self.clients[to_client].receive_datagram(datagram, self.now)
