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
  held bytes; a packet beyond either bound releases the oldest gaps first.

Sequence numbers are u32 and wrap; "behind" means within 2**31 before the expected one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

_U32: Final = 0xFFFFFFFF
_HALF: Final = 1 << 31


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


class ReorderBuffer:
    """Restores ``seq`` order with a bounded wait; output goes to ``deliver``."""

    __slots__ = (
        "_arrivals",
        "_deliver",
        "_duplicates",
        "_held",
        "_held_bytes",
        "_late",
        "_mask",
        "_max_bytes",
        "_next",
        "_released_by_bound",
        "_released_by_timeout",
        "_skipped",
        "_skipped_count",
        "_skipped_limit",
        "_slots",
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
        # Given-up sequence numbers, oldest first, so a late arrival can still go out.
        self._skipped: dict[int, None] = {}
        self._skipped_limit = 4 * capacity
        self._skipped_count = 0
        self._late = 0
        self._duplicates = 0
        self._released_by_timeout = 0
        self._released_by_bound = 0
        self.timeout = timeout

    @property
    def expected_seq(self) -> int:
        return self._next

    def push(self, seq: int, packet: bytes, now: float) -> None:
        """Accept one packet; in-order packets reach ``deliver`` before this returns."""
        distance = (seq - self._next) & _U32
        if distance == 0:
            self._deliver(packet)
            self._next = (seq + 1) & _U32
            if self._held:
                self._drain()
            return
        if distance >= _HALF:
            if seq in self._skipped:
                del self._skipped[seq]
                self._late += 1
                self._deliver(packet)
            else:
                self._duplicates += 1
            return
        capacity = self._mask + 1
        if distance >= capacity:
            self._released_by_bound += 1
            self._advance_to((seq - capacity + 1) & _U32)
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
        self._arrivals.append((seq, now))
        while self._held_bytes > self._max_bytes:
            self._released_by_bound += 1
            self._skip_gap()

    def deadline(self) -> float | None:
        """When the oldest held packet has waited ``timeout``; None when nothing waits."""
        if not self._held:
            return None
        self._forget_departed()
        return self._arrivals[0][1] + self.timeout

    def expire(self, now: float) -> None:
        """Give up every gap whose packets behind it have waited ``timeout`` by ``now``."""
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
        skipped[seq] = None
        if len(skipped) > self._skipped_limit:
            del skipped[next(iter(skipped))]

    def _forget_departed(self) -> None:
        """Drop arrival records of packets no longer held (behind the expected seq)."""
        arrivals = self._arrivals
        expected = self._next
        while arrivals and (arrivals[0][0] - expected) & _U32 >= _HALF:
            arrivals.popleft()
