"""KCP ARQ engines behind one interface.

Two engines speak the same wire format (the reference ikcp layout):

* :class:`ratbond.kcp.core.KCP` -- pure Python, runs everywhere (routers without a
  compiler);
* :class:`ratbond.kcp.fast.FastKCP` -- the reference C engine through the optional
  ``siokcp`` package, several times faster.

Callers build engines with :func:`create`, which picks the C engine when it is installed,
and program against :class:`KCPEngine` only.  Neither engine does I/O or reads a clock:
bytes leave through the ``output`` callback and the caller passes ``now`` in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

Output = Callable[[bytes], object]
EngineName = Literal["auto", "python", "c"]


class KCPEngine(Protocol):
    """What the bond layer needs from a KCP session (names as in ikcp)."""

    @property
    def conv(self) -> int: ...
    @property
    def state(self) -> int:
        """0 while alive, -1 once a segment was retransmitted ``dead_link`` times."""
        ...
    @property
    def srtt(self) -> int: ...
    @property
    def rto(self) -> int: ...
    @property
    def mss(self) -> int: ...
    @property
    def snd_wnd(self) -> int: ...
    @property
    def rmt_wnd(self) -> int: ...
    @property
    def cwnd(self) -> int: ...
    @property
    def inflight(self) -> int:
        """Segments sent and not yet acknowledged."""
        ...
    @property
    def send_span(self) -> int:
        """``snd_nxt - snd_una``: the sequence span KCP's send window limits (it includes
        segments acknowledged selectively behind a hole, unlike :attr:`inflight`)."""
        ...
    @property
    def retransmits(self) -> int:
        """Segments sent again (timeout or fast resend) since creation, if known."""
        ...

    def send(self, data: bytes) -> int: ...
    def input(self, data: bytes) -> int: ...
    def recv(self) -> bytes | None: ...
    def peeksize(self) -> int: ...
    def update(self, now_ms: int) -> None: ...
    def check(self, now_ms: int) -> int: ...
    def flush(self) -> None: ...
    def nodelay(self, nodelay: int, interval: int, resend: int, nc: int) -> int: ...
    def wndsize(self, sndwnd: int, rcvwnd: int) -> int: ...
    def setmtu(self, mtu: int) -> int: ...
    def waitsnd(self) -> int: ...
    def set_dead_link(self, retransmissions: int) -> None: ...
    def set_min_rto(self, ms: int) -> None:
        """Floor of the retransmission timeout (ikcp ``rx_minrto``); ``nodelay`` resets it."""
        ...
    def set_stream(self, stream: bool) -> None: ...


def c_engine_available() -> bool:
    """True when the optional ``siokcp`` package (reference ikcp in C) imports."""
    try:
        import siokcp  # noqa: F401
    except ImportError:
        return False
    return True


def create(conv: int, output: Output, engine: EngineName = "auto") -> KCPEngine:
    """Build a KCP session; ``auto`` prefers the C engine when it is installed."""
    if engine not in ("auto", "python", "c"):
        raise ValueError(f"unknown KCP engine {engine!r}: choose auto, python or c")
    if engine == "c" or (engine == "auto" and c_engine_available()):
        from ratbond.kcp.fast import FastKCP

        return FastKCP(conv, output)
    from ratbond.kcp.core import KCP

    return KCP(conv, output)
