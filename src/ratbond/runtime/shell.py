"""What the client's and the server's shells do alike around their connection object.

A shell moves bytes between file descriptors and a sans-I/O connection
(:mod:`ratbond.connection`) and applies the connection's events to the host.  Shared here:
the TUN with backpressure (read only while the connection can send), the one timer, and
the epilogue every callback ends with -- send what the connection has, write what it
received, act on its events, re-arm the timer.  A callback that fails still re-arms the
timer: an exception is a bug to log, never a reason for the tunnel to stop ticking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Generic, Protocol, TypeVar

from ratbond.connection import ConnectionEvent
from ratbond.deploy_hooks import Deployment
from ratbond.linux.tun import TunDevice
from ratbond.logs import TRACE, RateLimitedLog
from ratbond.mqtt.publisher import MqttPublisher
from ratbond.runtime.common import BATCH, Counters
from ratbond.runtime.loop import Deadline, earliest


class Connection(Protocol):
    """The part of a connection's API the shared shell drives."""

    def send_packet(self, packet: bytes, now: float) -> bool: ...
    def can_send(self) -> bool: ...
    def packets_received(self) -> list[bytes]: ...
    def next_event(self) -> ConnectionEvent | None: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def set_wall_offset(self, offset: float) -> None: ...


ConnT = TypeVar("ConnT", bound=Connection)


class Shell(ABC, Generic[ConnT]):
    """Owns the TUN and the timer of one end; subclasses own the sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connection: ConnT,
                 log: logging.Logger) -> None:
        self.loop = loop
        self.connection = connection
        self.log = log
        self.ratelog = RateLimitedLog(log)
        self.counters = Counters()
        self.started = time.monotonic()
        self.tun: TunDevice | None = None
        self._tun_reading = False
        self._timer = Deadline(loop, self._on_timer)
        self._trace = log.isEnabledFor(TRACE)  # read once: per-packet logging costs nothing off
        self.mqtt: MqttPublisher | None = None  # --mqtt-broker-addr: status and events out
        self.deployment: Deployment | None = None  # what start() set up for systemd, NAT

    # -- what each end does its own way --------------------------------------------------

    @abstractmethod
    def _send_datagrams(self, now: float) -> None:
        """Send everything the connection has queued."""

    @abstractmethod
    def _on_event(self, event: ConnectionEvent) -> None:
        """Log one event and apply it to the host (routes, TUN)."""

    def _shell_timer(self) -> float | None:
        """The shell's own next deadline (netlink rescans, DNS retries), if any."""
        return None

    def _shell_timer_work(self, now: float) -> None:
        """Run the shell's own due work (called on every timer)."""

    # -- shared plumbing -------------------------------------------------------------------

    def _now(self) -> float:
        return self.loop.time()

    def _on_tun_readable(self) -> None:
        tun = self.tun
        if tun is None:
            return
        now = self._now()
        send = self.connection.send_packet
        packets = tun.read_batch(BATCH)
        dropped = 0
        for packet in packets:
            if not send(packet, now):
                dropped += 1
        counters = self.counters
        counters.tun_rx_packets += len(packets)
        counters.tun_rx_dropped += dropped
        if self._trace:
            self.log.log(TRACE, "tun: read %d packets (%d bytes), %d dropped", len(packets),
                         sum(map(len, packets)), dropped)
        self._after_work(now)

    def _on_timer(self) -> None:
        now = self._now()
        try:
            self.connection.set_wall_offset(time.time() - now)
            self.connection.handle_timer(now)
            self._shell_timer_work(now)
        finally:
            self._after_work(now)

    def _after_work(self, now: float) -> None:
        """The epilogue of every callback: output, TUN writes, events, backpressure, timer."""
        conn = self.connection
        try:
            self._send_datagrams(now)
            self._deliver_received()
            while (event := conn.next_event()) is not None:
                if self.mqtt is not None:
                    self.mqtt.on_event(event)  # a queue put: never blocks
                self._on_event(event)
            self._set_tun_reading(conn.can_send())
        finally:
            self._timer.arm(earliest(conn.get_timer(), self._shell_timer()))

    def _deliver_received(self) -> None:
        """Write what the connection received to the TUN (a server with a clients file
        writes each client's packets to that client's own TUN instead)."""
        packets = self.connection.packets_received()
        if packets:
            self._write_tun(packets)

    def _write_tun(self, packets: list[bytes]) -> None:
        tun = self.tun
        counters = self.counters
        if tun is None:
            counters.tun_tx_errors += len(packets)
            return
        write = tun.write
        failed = 0
        for packet in packets:
            if not write(packet):
                failed += 1
        counters.tun_tx_packets += len(packets) - failed
        counters.tun_tx_errors += failed

    def _set_tun_reading(self, on: bool) -> None:
        """Backpressure: read the TUN only while the connection can take more; otherwise
        the kernel's TUN queue fills and drops, which the tunnelled flows react to."""
        tun = self.tun
        if on == self._tun_reading or tun is None:
            return
        if on:
            self.loop.add_reader(tun.fd, self._on_tun_readable)
        else:
            self.loop.remove_reader(tun.fd)
        self._tun_reading = on

    def _stop_mqtt(self) -> None:
        """Publish "offline" and disconnect (bounded, even against a dead broker)."""
        if self.mqtt is not None:
            self.mqtt.stop()
            self.mqtt = None

    def _close_tun(self) -> None:
        if self.tun is not None:
            self._set_tun_reading(False)
            self.tun.close()
            self.tun = None

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 1)
