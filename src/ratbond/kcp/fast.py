"""The reference ikcp (C, via the optional ``siokcp`` package) behind :class:`KCPEngine`.

Same wire format and semantics as :mod:`ratbond.kcp.core`; only the speed differs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import siokcp

from ratbond.kcp import Output
from ratbond.kcp.core import validate_datagram


class FastKCP:
    """Thin adapter: ikcp's names and return codes, Python types."""

    __slots__ = ("__weakref__", "_conv", "_kcp", "_output")

    def __init__(self, conv: int, output: Output) -> None:
        self._conv = conv
        self._output = output
        # The C object holds its callback, and is invisible to Python's cycle collector: a
        # callback holding this adapter (a bound method, or ``output``, which leads back
        # here through the bond's path) would make a cycle that is never freed -- every
        # session ever made, with its ikcp buffers, leaked.  It gets a weak reference.
        self._kcp = siokcp.KCPConnection(conv, _emitter(weakref.ref(self)), _ignore_log)

    @property
    def conv(self) -> int:
        return int(self._kcp.conv)

    @property
    def state(self) -> int:
        # ikcp stores state as an unsigned int: -1 reads back as 0xFFFFFFFF.
        value = int(self._kcp.state)
        return -1 if value in (-1, 0xFFFFFFFF) else value

    @property
    def srtt(self) -> int:
        return int(self._kcp.rx_srtt)

    @property
    def rto(self) -> int:
        return int(self._kcp.rx_rto)

    @property
    def mss(self) -> int:
        return int(self._kcp.mss)

    @property
    def snd_wnd(self) -> int:
        return int(self._kcp.snd_wnd)

    @property
    def rmt_wnd(self) -> int:
        return int(self._kcp.rmt_wnd)

    @property
    def cwnd(self) -> int:
        return int(self._kcp.cwnd)

    @property
    def inflight(self) -> int:
        return int(self._kcp.nsnd_buf)

    @property
    def send_span(self) -> int:
        return (int(self._kcp.snd_nxt) - int(self._kcp.snd_una)) & 0xFFFFFFFF

    @property
    def retransmits(self) -> int:
        # ikcp's ``xmit`` counts timeout retransmissions only (fast resends are not
        # counted), so this undercounts next to the Python engine's figure.
        return int(self._kcp.xmit)

    def send(self, data: bytes) -> int:
        if not data:
            return -1
        try:
            return int(self._kcp.send(data))
        except ValueError:
            return -2

    def input(self, data: bytes) -> int:
        # ikcp applies segments one by one and may stop half-way: refuse bad datagrams whole.
        code = validate_datagram(data, self._conv)
        if code:
            return code
        return int(self._kcp.receive_data(data))

    def recv(self) -> bytes | None:
        data: bytes | None = self._kcp.next_event()
        return data

    def peeksize(self) -> int:
        return int(self._kcp.peeksize())

    def update(self, now_ms: int) -> None:
        self._kcp.update(now_ms & 0xFFFFFFFF)

    def check(self, now_ms: int) -> int:
        """Next time (ms, same base as ``now_ms``) at which :meth:`update` is due."""
        low = now_ms & 0xFFFFFFFF
        due = int(self._kcp.check(low))
        return now_ms + ((due - low) & 0xFFFFFFFF)

    def flush(self) -> None:
        self._kcp.flush()

    def nodelay(self, nodelay: int, interval: int, resend: int, nc: int) -> int:
        return int(self._kcp.nodelay(nodelay, interval, resend, nc))

    def wndsize(self, sndwnd: int, rcvwnd: int) -> int:
        return int(self._kcp.wndsize(sndwnd, rcvwnd))

    def setmtu(self, mtu: int) -> int:
        return int(self._kcp.setmtu(mtu))

    def waitsnd(self) -> int:
        return int(self._kcp.waitsnd())

    def set_dead_link(self, retransmissions: int) -> None:
        self._kcp.dead_link = retransmissions

    def set_stream(self, stream: bool) -> None:
        self._kcp.stream = int(stream)

    def set_min_rto(self, ms: int) -> None:
        self._kcp.rx_minrto = ms


def _emitter(adapter: weakref.ref[FastKCP]) -> Callable[[bytes], int]:
    """ikcp's output hook for ``adapter`` (siokcp expects an int back; ``output`` may return
    anything)."""
    def emit(data: bytes) -> int:
        target = adapter()
        if target is not None:
            target._output(data)
        return 0
    return emit


def _ignore_log(_line: str) -> None:
    """ikcp's log hook: ratbond logs at the bond layer instead."""
