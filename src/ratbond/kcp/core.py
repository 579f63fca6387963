"""KCP ARQ in pure Python, sans-I/O, wire-compatible with the reference ikcp.

The engine never reads a clock and never touches a socket: the caller feeds datagrams to
:meth:`KCP.input`, passes the time to :meth:`KCP.update`, and receives datagrams through
the ``output`` callback.  Behaviour follows ikcp closely enough that, fed the same calls,
both engines emit the same bytes (tests/interop runs them in lock-step to prove it).
Fast resend follows ikcp's conservative rule (an ack is evidence of loss only for segments
sent no later than the acked one), as in the ikcp build that ``siokcp`` ships.  Deliberate
differences: :meth:`KCP.input` validates a whole datagram before touching any state, and
:attr:`KCP.retransmits` counts fast resends as well as timeouts.

Sequence numbers and times are kept as unbounded Python ints internally and reduced to
32 bits only on the wire: incoming 32-bit values are unwrapped against the nearest local
counter, so neither sequence-number nor clock wrap-around needs special cases.
"""

from __future__ import annotations

import struct
from collections import deque

from ratbond.kcp import Output

__all__ = [
    "CMD_ACK",
    "CMD_PUSH",
    "CMD_WASK",
    "CMD_WINS",
    "ERR_BAD_CMD",
    "ERR_BAD_HEADER",
    "ERR_BAD_LENGTH",
    "KCP",
    "OVERHEAD",
    "validate_datagram",
]

# Segment header: conv u32, cmd u8, frg u8, wnd u16, ts u32, sn u32, una u32, len u32.
_HEADER = struct.Struct("<IBBHIIII")
OVERHEAD = _HEADER.size

CMD_PUSH = 81
CMD_ACK = 82
CMD_WASK = 83  # window probe: "tell me your window"
CMD_WINS = 84  # window size announcement

# input() return codes (the same numbers ikcp uses).
ERR_BAD_HEADER = -1  # shorter than a header, or a conversation id that is not ours
ERR_BAD_LENGTH = -2  # a segment claims more data than the datagram holds
ERR_BAD_CMD = -3  # unknown command byte

_ASK_SEND = 1  # we must send a WASK
_ASK_TELL = 2  # we must send a WINS

_RTO_NODELAY_MIN = 30
_RTO_MIN = 100
_RTO_DEFAULT = 200
_RTO_MAX = 60_000
_WND_SND = 32
_WND_RCV = 128
_MTU_DEFAULT = 1400
_MTU_MIN = 50
_INTERVAL = 100
_INTERVAL_MIN = 10
_INTERVAL_MAX = 5000
_DEAD_LINK = 20
_THRESH_INIT = 2
_THRESH_MIN = 2
_PROBE_INIT = 7000
_PROBE_LIMIT = 120_000
_FASTACK_LIMIT = 5
_TIMER_RESYNC = 10_000  # update(): a clock jump larger than this restarts the flush timer

_FAR = 1 << 62  # "no timer": later than any caller's clock
_U32 = 0xFFFFFFFF
_HALF = 0x80000000


_PREFIX = struct.Struct("<IB")  # conv, cmd: what validation needs before the length
_LENGTH = struct.Struct("<I")


def validate_datagram(data: bytes, conv: int) -> int:
    """0 when every segment header in ``data`` is well formed for ``conv``, else ``ERR_*``.

    Lets an engine that applies segments one by one (the reference ikcp does) refuse a
    bad datagram before any of it takes effect.
    """
    size = len(data)
    if size < OVERHEAD:
        return ERR_BAD_HEADER
    seg_conv, cmd = _PREFIX.unpack_from(data, 0)
    if (seg_conv == conv and CMD_PUSH <= cmd <= CMD_WINS
            and _LENGTH.unpack_from(data, 20)[0] == size - OVERHEAD):
        return 0  # the common case on the data path: one segment filling the datagram
    offset = 0
    while size - offset >= OVERHEAD:
        seg_conv, cmd = _PREFIX.unpack_from(data, offset)
        if seg_conv != conv:
            return ERR_BAD_HEADER
        length = _LENGTH.unpack_from(data, offset + 20)[0]
        offset += OVERHEAD
        if length > size - offset:
            return ERR_BAD_LENGTH
        if cmd < CMD_PUSH or cmd > CMD_WINS:
            return ERR_BAD_CMD
        offset += length
    return 0


class _Segment:
    """One PUSH segment waiting for its acknowledgement."""

    __slots__ = ("acked", "data", "fastack", "frg", "resendts", "rto", "sn", "ts", "xmit")

    def __init__(self, sn: int, frg: int, data: bytes) -> None:
        self.sn = sn
        self.frg = frg
        self.data = data
        self.ts = 0  # time of the latest transmission
        self.resendts = 0
        self.rto = 0
        self.fastack = 0
        self.xmit = 0
        self.acked = False


class KCP:
    """One KCP conversation: reliable, ordered messages (or a byte stream) over datagrams."""

    __slots__ = (
        "_acklist",
        "_buf",
        "_conv",
        "_current",
        "_cwnd",
        "_dead_link",
        "_fast_due",
        "_fastlimit",
        "_fastresend",
        "_incr",
        "_interval",
        "_mss",
        "_mtu",
        "_nocwnd",
        "_nodelay",
        "_output",
        "_probe",
        "_probe_wait",
        "_rcv_buf",
        "_rcv_nxt",
        "_rcv_queue",
        "_rcv_wnd",
        "_resend_floor",
        "_retransmits",
        "_rmt_wnd",
        "_rx_minrto",
        "_rx_rto",
        "_rx_rttval",
        "_rx_srtt",
        "_snd_buf",
        "_snd_nxt",
        "_snd_queue",
        "_snd_una",
        "_snd_unacked",
        "_snd_wnd",
        "_ssthresh",
        "_state",
        "_stream",
        "_ts_flush",
        "_ts_probe",
        "_updated",
    )

    def __init__(self, conv: int, output: Output) -> None:
        if not 0 <= conv <= _U32:
            raise ValueError(f"conv must fit in 32 bits, got {conv}")
        self._conv = conv
        self._output = output
        self._state = 0
        self._mtu = _MTU_DEFAULT
        self._mss = _MTU_DEFAULT - OVERHEAD
        self._buf = bytearray()
        # Sender: messages not yet in flight, then segments in flight (in sn order, acked
        # ones are dropped from the dict at once and from the deque once they reach its head).
        self._snd_queue: deque[tuple[int, bytes]] = deque()
        self._snd_buf: deque[_Segment] = deque()
        self._snd_unacked: dict[int, _Segment] = {}
        self._snd_una = 0
        self._snd_nxt = 0
        # Flush visits old segments only when one may be due: some resendts is at or below
        # this floor (a lower bound, exact after each full visit), or fast acks piled up.
        self._resend_floor = _FAR
        self._fast_due = False
        # Receiver: in-order segments ready for recv(), out-of-order ones keyed by sn.
        self._rcv_queue: deque[tuple[int, bytes]] = deque()
        self._rcv_buf: dict[int, tuple[int, bytes]] = {}
        self._rcv_nxt = 0
        self._acklist: list[tuple[int, int]] = []
        self._snd_wnd = _WND_SND
        self._rcv_wnd = _WND_RCV
        self._rmt_wnd = _WND_RCV
        self._cwnd = 0
        self._incr = 0
        self._ssthresh = _THRESH_INIT
        self._rx_srtt = 0
        self._rx_rttval = 0
        self._rx_rto = _RTO_DEFAULT
        self._rx_minrto = _RTO_MIN
        self._current = 0
        self._interval = _INTERVAL
        self._ts_flush = _INTERVAL
        self._updated = False
        self._probe = 0
        self._ts_probe = 0
        self._probe_wait = 0
        self._nodelay = 0
        self._fastresend = 0
        self._fastlimit = _FASTACK_LIMIT
        self._nocwnd = 0
        self._stream = False
        self._dead_link = _DEAD_LINK
        self._retransmits = 0

    # -- read-only state ------------------------------------------------------------------

    @property
    def conv(self) -> int:
        return self._conv

    @property
    def state(self) -> int:
        """0 while alive, -1 once a segment was transmitted ``dead_link`` times."""
        return self._state

    @property
    def srtt(self) -> int:
        return self._rx_srtt

    @property
    def rto(self) -> int:
        return self._rx_rto

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def mss(self) -> int:
        return self._mss

    @property
    def snd_wnd(self) -> int:
        return self._snd_wnd

    @property
    def rcv_wnd(self) -> int:
        return self._rcv_wnd

    @property
    def rmt_wnd(self) -> int:
        return self._rmt_wnd

    @property
    def cwnd(self) -> int:
        return self._cwnd

    @property
    def ssthresh(self) -> int:
        return self._ssthresh

    @property
    def inflight(self) -> int:
        """Segments sent and not yet acknowledged."""
        return len(self._snd_unacked)

    @property
    def send_span(self) -> int:
        """Sequence numbers from the oldest unacknowledged segment to the next new one."""
        return (self._snd_nxt - self._snd_una) & 0xFFFFFFFF

    @property
    def retransmits(self) -> int:
        """Segments sent again, by timeout or by fast resend, since creation."""
        return self._retransmits

    @property
    def fastlimit(self) -> int:
        return self._fastlimit

    @fastlimit.setter
    def fastlimit(self, value: int) -> None:
        """Fast-resend a segment only while it was sent at most this often (<= 0: always)."""
        self._fastlimit = value
        self._fast_due = True

    # -- configuration (ikcp names and return codes) ---------------------------------------

    def nodelay(self, nodelay: int, interval: int, resend: int, nc: int) -> int:
        """ikcp_nodelay: a negative argument leaves that setting unchanged."""
        if nodelay >= 0:
            self._nodelay = nodelay
            self._rx_minrto = _RTO_NODELAY_MIN if nodelay else _RTO_MIN
        if interval >= 0:
            self._interval = min(max(interval, _INTERVAL_MIN), _INTERVAL_MAX)
        if resend >= 0:
            self._fastresend = resend
            self._fast_due = True
        if nc >= 0:
            self._nocwnd = nc
        return 0

    def wndsize(self, sndwnd: int, rcvwnd: int) -> int:
        """Set windows in segments; <= 0 keeps a value, the receive window is at least 128."""
        if sndwnd > 0:
            self._snd_wnd = sndwnd
        if rcvwnd > 0:
            self._rcv_wnd = max(rcvwnd, _WND_RCV)
        return 0

    def setmtu(self, mtu: int) -> int:
        """Largest datagram handed to ``output``; -1 (and no change) below 50 bytes."""
        if mtu < _MTU_MIN or mtu < OVERHEAD:
            return -1
        self._mtu = mtu
        self._mss = mtu - OVERHEAD
        return 0

    def set_dead_link(self, retransmissions: int) -> None:
        self._dead_link = retransmissions

    def set_min_rto(self, ms: int) -> None:
        """Floor of the retransmission timeout; applies from the next RTT sample."""
        self._rx_minrto = ms

    def set_stream(self, stream: bool) -> None:
        self._stream = bool(stream)

    def waitsnd(self) -> int:
        """Segments queued or in flight: the sender's backlog."""
        return len(self._snd_unacked) + len(self._snd_queue)

    # -- user data ------------------------------------------------------------------------

    def send(self, data: bytes) -> int:
        """Queue a message (or stream bytes); returns bytes accepted or a negative error.

        -1: empty data; -2: the message needs 128 or more fragments (more than a default
        receive window could ever reassemble).
        """
        length = len(data)
        if length == 0:
            return -1
        mss = self._mss
        queue = self._snd_queue
        sent = 0
        if self._stream and queue:
            _, last = queue[-1]
            room = mss - len(last)
            if room > 0:
                sent = min(room, length)
                queue[-1] = (0, last + bytes(data[:sent]))
                if sent == length:
                    return sent
                data = data[sent:]
                length -= sent
        count = 1 if length <= mss else (length + mss - 1) // mss
        if count >= _WND_RCV:
            return sent if self._stream and sent else -2
        stream = self._stream
        append = queue.append
        if count == 1:
            append((0, bytes(data)))
        else:
            for i in range(count):
                append((0 if stream else count - i - 1, bytes(data[i * mss : (i + 1) * mss])))
        return sent + length

    def peeksize(self) -> int:
        """Size of the next complete message, or -1 when there is none yet."""
        queue = self._rcv_queue
        if not queue:
            return -1
        frg, data = queue[0]
        if frg == 0:
            return len(data)
        if len(queue) < frg + 1:
            return -1
        size = 0
        for frg, data in queue:
            size += len(data)
            if frg == 0:
                break
        return size

    def recv(self) -> bytes | None:
        """The next complete message (stream mode: the next chunk), or None."""
        queue = self._rcv_queue
        if not queue:
            return None
        rcv_wnd = self._rcv_wnd
        recover = len(queue) >= rcv_wnd
        frg, data = queue[0]
        if frg == 0:
            queue.popleft()
        else:
            if self.peeksize() < 0:
                return None
            parts = []
            popleft = queue.popleft
            # A run whose fragment numbers never reach 0 (a broken or hostile peer) ends at
            # the queue's end, as in ikcp, instead of popping an empty queue.
            while queue:
                frg, chunk = popleft()
                parts.append(chunk)
                if frg == 0:
                    break
            data = b"".join(parts)
        if self._rcv_buf:
            self._move_ready()
        if recover and len(queue) < rcv_wnd:
            # Our window was full, so the peer may be probing: tell it at once.
            self._probe |= _ASK_TELL
        return data

    def _move_ready(self) -> None:
        """Move segments that became contiguous from rcv_buf to rcv_queue (window allowing)."""
        rcv_buf = self._rcv_buf
        if not rcv_buf:
            return
        queue = self._rcv_queue
        rcv_wnd = self._rcv_wnd
        nxt = self._rcv_nxt
        while len(queue) < rcv_wnd:
            item = rcv_buf.pop(nxt, None)
            if item is None:
                break
            queue.append(item)
            nxt += 1
        self._rcv_nxt = nxt

    # -- datagrams in -------------------------------------------------------------------------

    def input(self, data: bytes) -> int:  # noqa: C901 - ikcp's input, step for step (twin-tested)
        """Feed one datagram from the peer; 0, or an ``ERR_*`` code with no state changed.

        Trailing bytes too short for a header are ignored, as ikcp does.
        """
        size = len(data)
        if size < OVERHEAD:
            return ERR_BAD_HEADER
        # Pass 1: validate every segment header before anything changes.
        unpack = _HEADER.unpack_from
        conv = self._conv
        segments = []
        offset = 0
        while size - offset >= OVERHEAD:
            fields = unpack(data, offset)
            if fields[0] != conv:
                return ERR_BAD_HEADER
            offset += OVERHEAD
            length = fields[7]
            if length > size - offset:
                return ERR_BAD_LENGTH
            cmd = fields[1]
            if cmd < CMD_PUSH or cmd > CMD_WINS:
                return ERR_BAD_CMD
            segments.append((fields, offset))
            offset += length

        # Pass 2: apply them in order (hot path: state cached in locals).
        prev_una = snd_una = self._snd_una
        snd_nxt = self._snd_nxt
        snd_buf = self._snd_buf
        unacked = self._snd_unacked
        rcv_queue = self._rcv_queue
        rcv_buf = self._rcv_buf
        rcv_wnd = self._rcv_wnd
        push_ack = self._acklist.append
        current = self._current
        have_ack = False
        maxack = 0
        latest_ts = 0
        for (_, cmd, frg, _wnd, ts, sn, una, length), offset in segments:
            # Cumulative ack: everything below una arrived.
            una_full = snd_una + (((una - snd_una) + _HALF) & _U32) - _HALF
            if una_full > snd_una and snd_buf:
                while snd_buf:
                    seg = snd_buf[0]
                    if seg.sn >= una_full:
                        break
                    snd_buf.popleft()
                    if not seg.acked:
                        del unacked[seg.sn]
                snd_una = snd_buf[0].sn if snd_buf else snd_nxt
            if cmd == CMD_PUSH:
                rcv_nxt = self._rcv_nxt
                sn_full = rcv_nxt + (((sn - rcv_nxt) + _HALF) & _U32) - _HALF
                # ikcp's test, _itimediff(sn, rcv_nxt + rcv_wnd) < 0, pivots on the window's
                # end, not on rcv_nxt: a sn about 2**31 behind is not acked (found by the
                # lock-step fuzzer, fuzz/fuzz_kcp_c.py).
                if ((sn - rcv_nxt - rcv_wnd) & _U32) >= _HALF:
                    push_ack((sn, ts))
                    if sn_full >= rcv_nxt:
                        payload = bytes(data[offset : offset + length])
                        if sn_full == rcv_nxt and not rcv_buf and len(rcv_queue) < rcv_wnd:
                            rcv_queue.append((frg, payload))
                            self._rcv_nxt = rcv_nxt + 1
                        elif sn_full not in rcv_buf:
                            rcv_buf[sn_full] = (frg, payload)
                            self._move_ready()
            elif cmd == CMD_ACK:
                rtt = (((current - ts) + _HALF) & _U32) - _HALF
                if rtt >= 0:
                    self._update_rtt(rtt)
                sn_full = snd_una + (((sn - snd_una) + _HALF) & _U32) - _HALF
                if snd_una <= sn_full < snd_nxt:
                    acked = unacked.pop(sn_full, None)
                    if acked is not None:
                        acked.acked = True
                        while snd_buf and snd_buf[0].acked:
                            snd_buf.popleft()
                        snd_una = snd_buf[0].sn if snd_buf else snd_nxt
                # The newest ack (by send time) is the evidence for fast resend.
                if not have_ack:
                    have_ack = True
                    maxack = sn_full
                    latest_ts = ts
                elif sn_full > maxack and 0 < ((ts - latest_ts) & _U32) < _HALF:
                    maxack = sn_full
                    latest_ts = ts
            elif cmd == CMD_WASK:
                self._probe |= _ASK_TELL
            # CMD_WINS carries nothing but the window, taken below.
        # Every segment carries the peer's window; the last one is the newest.
        self._rmt_wnd = segments[-1][0][3]
        self._snd_una = snd_una

        if have_ack and snd_una <= maxack < snd_nxt:
            # Selective-ack evidence: a segment sent no later than the acked one and still
            # unacknowledged was probably lost (ikcp's conservative fast-ack rule).
            acked_ts = current + (((latest_ts - current) + _HALF) & _U32) - _HALF
            resend = self._fastresend
            for seg in snd_buf:
                if seg.sn >= maxack:
                    break
                if not seg.acked and acked_ts >= seg.ts:
                    seg.fastack += 1
                    if 0 < resend <= seg.fastack:
                        self._fast_due = True

        if snd_una > prev_una and self._cwnd < self._rmt_wnd:
            self._grow_cwnd()
        return 0

    def _update_rtt(self, rtt: int) -> None:
        """RFC 6298-style smoothing, with ikcp's integer arithmetic."""
        srtt = self._rx_srtt
        if srtt == 0:
            srtt = rtt
            rttval = rtt // 2
        else:
            delta = rtt - srtt if rtt > srtt else srtt - rtt
            rttval = (3 * self._rx_rttval + delta) // 4
            srtt = (7 * srtt + rtt) // 8 or 1
        self._rx_srtt = srtt
        self._rx_rttval = rttval
        rto = srtt + (4 * rttval if 4 * rttval > self._interval else self._interval)
        minrto = self._rx_minrto
        self._rx_rto = minrto if rto < minrto else (rto if rto < _RTO_MAX else _RTO_MAX)

    def _grow_cwnd(self) -> None:
        """Slow start below ssthresh, then additive increase (bytes in ``incr``)."""
        mss = self._mss
        if self._cwnd < self._ssthresh:
            self._cwnd += 1
            self._incr += mss
        else:
            incr = max(self._incr, mss)
            incr += (mss * mss) // incr + mss // 16
            self._incr = incr
            if (self._cwnd + 1) * mss <= incr:
                self._cwnd = (incr + mss - 1) // mss
        if self._cwnd > self._rmt_wnd:
            self._cwnd = self._rmt_wnd
            self._incr = self._rmt_wnd * mss

    # -- time and datagrams out ----------------------------------------------------------------

    def update(self, now_ms: int) -> None:
        """Advance the clock; flushes when the ``interval`` timer is due."""
        self._current = now_ms
        if not self._updated:
            self._updated = True
            self._ts_flush = now_ms
        slap = now_ms - self._ts_flush
        if slap >= _TIMER_RESYNC or slap < -_TIMER_RESYNC:
            self._ts_flush = now_ms
            slap = 0
        if slap >= 0:
            self._ts_flush += self._interval
            if now_ms >= self._ts_flush:
                self._ts_flush = now_ms + self._interval
            self.flush()

    def check(self, now_ms: int) -> int:
        """Absolute time (same base as ``now_ms``) at which :meth:`update` is next due."""
        if not self._updated:
            return now_ms
        ts_flush = self._ts_flush
        if now_ms - ts_flush >= _TIMER_RESYNC or now_ms - ts_flush < -_TIMER_RESYNC:
            ts_flush = now_ms
        if now_ms >= ts_flush:
            return now_ms
        wait = min(ts_flush - now_ms, self._interval)
        if self._resend_floor - now_ms >= wait:
            return now_ms + wait  # no segment can be due sooner
        for seg in self._snd_buf:
            if seg.acked:
                continue
            diff = seg.resendts - now_ms
            if diff <= 0:
                return now_ms
            wait = min(wait, diff)
        return now_ms + wait

    def flush(self) -> None:  # noqa: C901 - ikcp's flush, step for step (twin-tested)
        """Send pending acks, window probes and due segments, coalesced up to ``mtu``."""
        if not self._updated:
            return
        current = self._current
        buf = self._buf
        mtu = self._mtu
        output = self._output
        pack = _HEADER.pack
        conv = self._conv
        queued = len(self._rcv_queue)
        wnd = self._rcv_wnd - queued if queued < self._rcv_wnd else 0
        una = self._rcv_nxt & _U32

        # ikcp reuses one header for acks and probes, so probes echo the last ack's sn/ts.
        last_sn = last_ts = 0
        acks = self._acklist
        if acks:
            for last_sn, last_ts in acks:
                if len(buf) + OVERHEAD > mtu:
                    output(bytes(buf))
                    buf.clear()
                buf += pack(conv, CMD_ACK, 0, wnd, last_ts, last_sn, una, 0)
            acks.clear()

        if self._rmt_wnd == 0:
            # The peer's window is closed: probe it, backing off to at most 2 minutes.
            if self._probe_wait == 0:
                self._probe_wait = _PROBE_INIT
                self._ts_probe = current + _PROBE_INIT
            elif current >= self._ts_probe:
                wait = max(self._probe_wait, _PROBE_INIT)
                self._probe_wait = min(wait + wait // 2, _PROBE_LIMIT)
                self._ts_probe = current + self._probe_wait
                self._probe |= _ASK_SEND
        else:
            self._ts_probe = 0
            self._probe_wait = 0
        probe = self._probe
        if probe:
            for flag, cmd in ((_ASK_SEND, CMD_WASK), (_ASK_TELL, CMD_WINS)):
                if probe & flag:
                    if len(buf) + OVERHEAD > mtu:
                        output(bytes(buf))
                        buf.clear()
                    buf += pack(conv, cmd, 0, wnd, last_ts, last_sn, una, 0)
            self._probe = 0

        # Move queued messages into flight, as far as the windows allow.
        cwnd = min(self._snd_wnd, self._rmt_wnd)
        if not self._nocwnd:
            cwnd = min(self._cwnd, cwnd)
        snd_queue = self._snd_queue
        snd_buf = self._snd_buf
        fresh: list[_Segment] = []
        if snd_queue:
            limit = self._snd_una + cwnd
            snd_nxt = self._snd_nxt
            unacked = self._snd_unacked
            while snd_nxt < limit and snd_queue:
                frg, payload = snd_queue.popleft()
                seg = _Segment(snd_nxt, frg, payload)
                snd_buf.append(seg)
                fresh.append(seg)
                unacked[snd_nxt] = seg
                snd_nxt += 1
            self._snd_nxt = snd_nxt

        # Visit every segment in flight only when one may be due (ikcp always does; the
        # result is the same), otherwise just the fresh ones, which sit at the tail.
        full_visit = self._fast_due or current >= self._resend_floor
        visit: deque[_Segment] | list[_Segment] = snd_buf if full_visit else fresh
        floor = _FAR if full_visit else self._resend_floor
        still_fast = False

        rx_rto = self._rx_rto
        nodelay = self._nodelay
        resent = self._fastresend if self._fastresend > 0 else _U32
        rtomin = 0 if nodelay else rx_rto >> 3
        fastlimit = self._fastlimit
        dead_link = self._dead_link
        ts = current & _U32
        change = False
        lost = False
        for seg in visit:
            if seg.acked:
                continue
            xmit = seg.xmit
            if xmit == 0:
                seg.rto = rx_rto
                seg.resendts = current + rx_rto + rtomin
            elif current >= seg.resendts:
                # Timeout: back off (doubling, or by half when nodelay is on).
                if nodelay == 0:
                    seg.rto += max(seg.rto, rx_rto)
                else:
                    seg.rto += (seg.rto if nodelay < 2 else rx_rto) // 2
                seg.resendts = current + seg.rto
                self._retransmits += 1
                lost = True
                # A timeout keeps the fast-ack count: the next flush may fast-resend again.
                still_fast = still_fast or seg.fastack >= resent
            elif seg.fastack >= resent and (xmit <= fastlimit or fastlimit <= 0):
                seg.fastack = 0
                seg.resendts = current + seg.rto
                self._retransmits += 1
                change = True
            else:
                if seg.resendts < floor:  # noqa: PLR1730 (hot loop: no call to min())
                    floor = seg.resendts
                continue
            if seg.resendts < floor:  # noqa: PLR1730
                floor = seg.resendts
            seg.xmit = xmit = xmit + 1
            seg.ts = current
            payload = seg.data
            if len(buf) + OVERHEAD + len(payload) > mtu:
                output(bytes(buf))
                buf.clear()
            buf += pack(conv, CMD_PUSH, seg.frg, wnd, ts, seg.sn & _U32, una, len(payload))
            buf += payload
            if xmit >= dead_link:
                self._state = -1
        if buf:
            output(bytes(buf))
            buf.clear()
        self._resend_floor = floor
        if full_visit:
            self._fast_due = still_fast

        if change:
            # Fast resend: halve towards what is in flight, keep the pipe nearly full.
            self._ssthresh = max((self._snd_nxt - self._snd_una) // 2, _THRESH_MIN)
            self._cwnd = self._ssthresh + resent
            self._incr = self._cwnd * self._mss
        if lost:
            # Timeout: restart from one segment.
            self._ssthresh = max(cwnd // 2, _THRESH_MIN)
            self._cwnd = 1
            self._incr = self._mss
        if self._cwnd < 1:
            self._cwnd = 1
            self._incr = self._mss
