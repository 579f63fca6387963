"""Receiver-side reorder buffer for packets sprayed over several paths.

Round-robin sends consecutive packets of one flow over different paths, which deliver
them out of order.  The receiver puts them back in bond ``seq`` order here:

* a packet at the expected ``seq`` goes out at once, with whatever consecutive packets
  were waiting behind it;
* a packet after a gap waits, but never longer than ``timeout`` (a path died with the
  missing packet in flight, or is very late); then the gap is given up;
* a given-up packet that still arrives goes out late rather than being dropped: the flow's
  TCP copes with reordering far better than with loss;
* a packet whose ``seq`` was already delivered is a duplicate and is dropped;
* memory is bounded by a window of ``max_packets`` sequence numbers and ``max_bytes``
  held bytes; a packet beyond either bound releases the oldest gaps first;
* an *express* packet (:meth:`ReorderBuffer.pass_through`: small, latency-sensitive)
  goes out at once but still takes its place in the sequence, so it fills its gap and
  a second copy of it is a duplicate.

:class:`DedupWindow` drops duplicates for a sender that does not spray (each path keeps
its flows in order, so nothing is held, but a packet resent after a path died or
duplicated on purpose may arrive twice).

Sequence numbers are u32 and wrap; "behind" means within 2**31 before the expected one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

_U32: Final = 0xFFFFFFFF
_HALF: Final = 1 << 31
#: Slot content of an express packet that already went out (empty packets are never held).
_PASSED: Final = b""
#: A packet this far or further ahead of the expected seq is refused: real senders never
#: run that far ahead of the receiver, and accepting any jump up to 2**31 would let three
#: jumps bring an already delivered seq "ahead" again (a duplicate delivered).
MAX_JUMP: Final = 1 << 24
#: The observed gap wait (see ReorderBuffer.observed_wait) halves every this many seconds.
OBSERVED_HALF_LIFE: Final = 5.0
#: The adaptive timeout covers the observed wait with this margin.
OBSERVED_MARGIN: Final = 1.25
#: Sequence numbers a DedupWindow remembers.
DEDUP_WINDOW: Final = 1 << 16


@dataclass(frozen=True, slots=True)
class ReorderStats:
    """Counters of one reorder buffer (all monotonic except ``held*`` and ``timeout_s``)."""

    held: int
    held_bytes: int
    released_by_timeout: int
    released_by_bound: int
    skipped: int
    late: int
    duplicates: int
    timeout_s: float
    passed: int = 0  # express packets handed out at once
    gave_up: int = 0  # sequence numbers given up (== skipped; the name status pages use)
    rejected: int = 0  # packets MAX_JUMP or more ahead, dropped


class ReorderBuffer:
    """Restores ``seq`` order with a bounded wait; output goes to ``deliver``."""

    __slots__ = (
        "_arrivals",
        "_clock",
        "_deliver",
        "_duplicates",
        "_held",
        "_held_bytes",
        "_late",
        "_mask",
        "_max_bytes",
        "_next",
        "_observed_at",
        "_passed",
        "_rejected",
        "_released_by_bound",
        "_released_by_timeout",
        "_skipped",
        "_skipped_count",
        "_skipped_limit",
        "_slots",
        "adapt_up_to",
        "observed_wait",
        "timeout",
    )

    def __init__(
        self,
        deliver: Callable[[bytes], object],
        *,
        max_packets: int = 4096,
        max_bytes: int = 4 << 20,
        timeout: float = 0.1,
        first_seq: int = 0,
    ) -> None:
        if max_packets < 1:
            raise ValueError(f"max_packets must be >= 1, got {max_packets}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if not timeout >= 0.0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        capacity = 1 << (max_packets - 1).bit_length()
        self._deliver = deliver
        self._mask = capacity - 1
        self._slots: list[bytes | None] = [None] * capacity
        # (seq, arrival) of held packets in arrival order; entries of packets that already
        # left are skipped lazily, so each packet costs one append and one pop.
        self._arrivals: deque[tuple[int, float]] = deque()
        self._max_bytes = max_bytes
        self._next = first_seq & _U32
        self._held = 0
        self._held_bytes = 0
        # Given-up sequence numbers, oldest first, so a late arrival can still go out; with
        # when the packets behind the gap began to wait (None: not given up for waiting).
        self._skipped: dict[int, float | None] = {}
        self._clock: float | None = None
        self._skipped_limit = 4 * capacity
        self._skipped_count = 0
        self._late = 0
        self._passed = 0
        self._rejected = 0
        self._duplicates = 0
        self._released_by_timeout = 0
        self._released_by_bound = 0
        self.timeout = timeout
        # How long gaps were actually waited for before they filled (decaying maximum):
        # the measured delay spread and jitter of the paths the packets came over.
        self.observed_wait = 0.0
        self._observed_at = 0.0
        # When set (seconds), an observed wait longer than ``timeout`` raises it at once
        # (with OBSERVED_MARGIN), up to this bound; the owner lowers it again.
        self.adapt_up_to: float | None = None

    @property
    def expected_seq(self) -> int:
        return self._next

    def push(self, seq: int, packet: bytes, now: float) -> None:
        """Accept one packet; in-order packets reach ``deliver`` before this returns."""
        distance = (seq - self._next) & _U32
        if distance == 0:
            self._deliver(packet)
            self._next = expected = (seq + 1) & _U32
            if self._held:
                # A gap filled: note how long the oldest packet behind it waited (the
                # records of packets already gone are dropped lazily).
                arrivals = self._arrivals
                while arrivals and (arrivals[0][0] - expected) & _U32 >= _HALF:
                    arrivals.popleft()
                if arrivals and (
                    now - arrivals[0][1] > self.observed_wait
                    or now - self._observed_at >= OBSERVED_HALF_LIFE
                ):
                    self._observe(now, now - arrivals[0][1])
                self._drain()
            return
        if distance >= _HALF:
            if seq in self._skipped:
                waiting_since = self._skipped.pop(seq)
                self._late += 1
                if waiting_since is not None:
                    self._observe(now, now - waiting_since)
                self._deliver(packet)
            else:
                self._duplicates += 1
            return
        if distance > self._mask:
            if self._make_room(seq):
                # The window moved, and may have moved onto this very packet.
                self.push(seq, packet, now)
            return
        index = seq & self._mask
        if self._slots[index] is not None:
            self._duplicates += 1
            return
        self._slots[index] = packet
        self._held += 1
        self._held_bytes += len(packet)
        self._note_arrival(seq, now)
        while self._held_bytes > self._max_bytes:
            self._released_by_bound += 1
            self._clock = None
            self._skip_gap()

    def _make_room(self, seq: int) -> bool:
        """``seq`` lies beyond the window: refuse an absurd jump (False: a peer's bug or a
        forged stream), else move the window to end at ``seq``, releasing what it passes."""
        if (seq - self._next) & _U32 >= MAX_JUMP:
            self._rejected += 1
            return False
        self._released_by_bound += 1
        self._clock = None
        self._advance_to((seq - self._mask) & _U32)
        return True

    def _observe(self, now: float, wait: float) -> None:
        """A gap's successors waited ``wait`` (filled, or arrived late): keep the
        decaying maximum, and raise an adaptive timeout that was too short."""
        if now - self._observed_at >= OBSERVED_HALF_LIFE:
            self.observed_wait *= 0.5
            self._observed_at = now
        if wait > self.observed_wait:
            self.observed_wait = wait
            bound = self.adapt_up_to
            if bound is not None and OBSERVED_MARGIN * wait > self.timeout:
                self.timeout = min(bound, OBSERVED_MARGIN * wait)

    def pass_through(self, seq: int, packet: bytes, now: float) -> None:
        """Hand out an express packet at once (unless a duplicate), keeping its place."""
        distance = (seq - self._next) & _U32
        if distance >= _HALF:
            if seq in self._skipped:
                del self._skipped[seq]
                self._passed += 1
                self._deliver(packet)
            else:
                self._duplicates += 1
            return
        if distance == 0:
            self._passed += 1
            self._deliver(packet)
            self._next = (seq + 1) & _U32
            if self._held:
                self._drain()
            return
        if distance > self._mask:
            if self._make_room(seq):
                self.pass_through(seq, packet, now)
            return
        index = seq & self._mask
        if self._slots[index] is not None:
            self._duplicates += 1
            return
        self._passed += 1
        self._deliver(packet)
        self._slots[index] = _PASSED
        self._held += 1
        self._note_arrival(seq, now)

    def deadline(self) -> float | None:
        """When the oldest held packet has waited ``timeout``; None when nothing waits."""
        if not self._held:
            return None
        self._forget_departed()
        return self._arrivals[0][1] + self.timeout

    def expire(self, now: float) -> None:
        """Give up every gap whose packets behind it have waited ``timeout`` by ``now``
        (``math.inf``: every gap, without blaming the timeout for it)."""
        self._clock = None if now == math.inf else now - self.timeout
        while self._held:
            self._forget_departed()
            if self._arrivals[0][1] + self.timeout > now:
                return
            self._released_by_timeout += 1
            self._skip_gap()

    def stats(self) -> ReorderStats:
        return ReorderStats(
            held=self._held,
            held_bytes=self._held_bytes,
            released_by_timeout=self._released_by_timeout,
            released_by_bound=self._released_by_bound,
            skipped=self._skipped_count,
            late=self._late,
            duplicates=self._duplicates,
            timeout_s=self.timeout,
            passed=self._passed,
            gave_up=self._skipped_count,
            rejected=self._rejected,
        )

    def _drain(self) -> None:
        """Deliver the run of consecutive held packets starting at the expected seq."""
        slots = self._slots
        mask = self._mask
        deliver = self._deliver
        seq = self._next
        while True:
            packet = slots[seq & mask]
            if packet is None:
                break
            slots[seq & mask] = None
            self._held -= 1
            if packet:
                self._held_bytes -= len(packet)
                deliver(packet)
            seq = (seq + 1) & _U32
        self._next = seq
        if not self._held:
            self._arrivals.clear()

    def _skip_gap(self) -> None:
        """Give up the missing packets before the first held one, then deliver the run."""
        slots = self._slots
        mask = self._mask
        seq = self._next
        while slots[seq & mask] is None:
            self._mark_skipped(seq)
            seq = (seq + 1) & _U32
        self._next = seq
        self._drain()

    def _advance_to(self, target: int) -> None:
        """Move the expected seq to ``target``, delivering what is held on the way."""
        slots = self._slots
        mask = self._mask
        steps = (target - self._next) & _U32
        # Everything held lies within one window: walk it, jump over the rest.
        walk = min(steps, mask + 1)
        for _ in range(walk):
            seq = self._next
            packet = slots[seq & mask]
            if packet is None:
                self._mark_skipped(seq)
            else:
                slots[seq & mask] = None
                self._held -= 1
                if packet:
                    self._held_bytes -= len(packet)
                    self._deliver(packet)
            self._next = (seq + 1) & _U32
        if steps > walk:
            self._skipped_count += steps - walk
            self._next = target
        if self._held:
            self._drain()
        else:
            self._arrivals.clear()

    def _mark_skipped(self, seq: int) -> None:
        self._skipped_count += 1
        skipped = self._skipped
        skipped[seq] = self._clock
        if len(skipped) > self._skipped_limit:
            del skipped[next(iter(skipped))]

    def _note_arrival(self, seq: int, now: float) -> None:
        """Record a held packet's arrival; records of departed packets are also dropped
        here once they pile up, so memory stays bounded even when no one asks for the
        deadline (the window moved on by the bound alone)."""
        arrivals = self._arrivals
        arrivals.append((seq, now))
        if len(arrivals) > 2 * (self._mask + 1):
            self._forget_departed()

    def _forget_departed(self) -> None:
        """Drop arrival records of packets no longer held (behind the expected seq)."""
        arrivals = self._arrivals
        expected = self._next
        while arrivals and (arrivals[0][0] - expected) & _U32 >= _HALF:
            arrivals.popleft()


class DedupWindow:
    """Remembers the last :data:`DEDUP_WINDOW` sequence numbers (one slot each)."""

    __slots__ = ("duplicates", "mask", "seen")

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        capacity = 1 << (size - 1).bit_length()
        self.mask = capacity - 1
        # seen[seq & mask] is the last seq of that slot (the bond inlines this check).
        self.seen = [-1] * capacity
        self.duplicates = 0

    def fresh(self, seq: int) -> bool:
        """True the first time ``seq`` is seen (within the window), False for a copy."""
        index = seq & self.mask
        if self.seen[index] == seq:
            self.duplicates += 1
            return False
        self.seen[index] = seq
        return True
