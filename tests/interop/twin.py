"""Lock-step differential harness: our KCP and the reference ikcp fed identical calls.

:class:`Twin` looks like one engine; every call goes to both, and every return value,
every emitted datagram and the visible state must match.  A mismatch raises
:class:`DivergedError` at the first call where the engines disagree.
"""

from __future__ import annotations

from typing import Any

from ratbond.kcp import Output
from ratbond.kcp.core import KCP
from ratbond.kcp.fast import FastKCP


class DivergedError(AssertionError):
    """Our engine did something the reference did not."""


class Twin:
    def __init__(self, conv: int, output: Output) -> None:
        self._ours_out: list[bytes] = []
        self._ref_out: list[bytes] = []
        self.ours = KCP(conv, self._ours_out.append)
        self.ref = FastKCP(conv, self._ref_out.append)
        self._output = output
        self.calls = 0

    def _both(self, name: str, *args: object) -> Any:
        self.calls += 1
        mine = getattr(self.ours, name)(*args)
        theirs = getattr(self.ref, name)(*args)
        if mine != theirs:
            raise DivergedError(f"{name}{args!r}: ours {mine!r}, reference {theirs!r}")
        if self._ours_out != self._ref_out:
            raise DivergedError(
                f"{name}{args!r} emitted different datagrams:\n"
                f" ours {[d.hex() for d in self._ours_out]}\n"
                f" ref  {[d.hex() for d in self._ref_out]}"
            )
        for data in self._ours_out:
            self._output(data)
        self._ours_out.clear()
        self._ref_out.clear()
        self._compare_state(name)
        return mine

    def _compare_state(self, after: str) -> None:
        for stat in ("state", "srtt", "rto", "rmt_wnd", "cwnd", "inflight", "snd_wnd", "mss"):
            mine, theirs = getattr(self.ours, stat), getattr(self.ref, stat)
            if mine != theirs:
                raise DivergedError(f"after {after}: {stat} ours {mine}, reference {theirs}")
        if self.ours.waitsnd() != self.ref.waitsnd():
            raise DivergedError(f"after {after}: waitsnd differs")

    # The KCPEngine surface, each call mirrored.
    def send(self, data: bytes) -> int:
        return int(self._both("send", data))

    def input(self, data: bytes) -> int:
        return int(self._both("input", data))

    def recv(self) -> bytes | None:
        result: bytes | None = self._both("recv")
        return result

    def peeksize(self) -> int:
        return int(self._both("peeksize"))

    def update(self, now_ms: int) -> None:
        self._both("update", now_ms)

    def check(self, now_ms: int) -> int:
        return int(self._both("check", now_ms))

    def flush(self) -> None:
        self._both("flush")

    def nodelay(self, nodelay: int, interval: int, resend: int, nc: int) -> int:
        return int(self._both("nodelay", nodelay, interval, resend, nc))

    def wndsize(self, sndwnd: int, rcvwnd: int) -> int:
        return int(self._both("wndsize", sndwnd, rcvwnd))

    def setmtu(self, mtu: int) -> int:
        return int(self._both("setmtu", mtu))

    def waitsnd(self) -> int:
        return int(self._both("waitsnd"))

    def set_dead_link(self, retransmissions: int) -> None:
        self._both("set_dead_link", retransmissions)

    def set_stream(self, stream: bool) -> None:
        self._both("set_stream", stream)

    def set_min_rto(self, ms: int) -> None:
        self._both("set_min_rto", ms)

    @property
    def conv(self) -> int:
        return self.ours.conv

    @property
    def state(self) -> int:
        return self.ours.state

    @property
    def srtt(self) -> int:
        return self.ours.srtt

    @property
    def rto(self) -> int:
        return self.ours.rto

    @property
    def mss(self) -> int:
        return self.ours.mss

    @property
    def snd_wnd(self) -> int:
        return self.ours.snd_wnd

    @property
    def rmt_wnd(self) -> int:
        return self.ours.rmt_wnd

    @property
    def cwnd(self) -> int:
        return self.ours.cwnd

    @property
    def inflight(self) -> int:
        return self.ours.inflight

    @property
    def send_span(self) -> int:
        if self.ours.send_span != self.ref.send_span:
            raise DivergedError(
                f"send_span: ours {self.ours.send_span}, reference {self.ref.send_span}")
        return self.ours.send_span

    @property
    def retransmits(self) -> int:
        return self.ours.retransmits
