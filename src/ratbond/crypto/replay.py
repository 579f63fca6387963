"""Sliding replay window over 64-bit datagram counters (one per path, direction and key).

A counter is accepted once, and only if it is newer than the newest seen or less than
``WINDOW_SIZE`` behind it: datagrams reordered by up to 4,095 positions on one path still get
through; duplicates and older ones are dropped.  The bitmap is a ring of 64-bit words indexed
by ``counter // 64`` (WireGuard's layout): moving forward clears only the words skipped, at
most the whole ring however far the jump, so check and commit are O(1) with small integers --
no big-int shifting per datagram.  The channel calls :meth:`check` before spending an AEAD on
a datagram and :meth:`commit` only after it authenticated, so forgeries never move the window.
"""

from __future__ import annotations

WINDOW_SIZE = 4096
_WORD_BITS = 64
_RING_WORDS = WINDOW_SIZE // _WORD_BITS + 1  # one spare word: the newest word is partial


class ReplayWindow:
    __slots__ = ("_newest", "_ring", "limit")

    def __init__(self, limit: int = 2**64) -> None:
        """``limit``: counters at or above it are refused (key exhausted)."""
        self._newest = -1  # newest accepted counter; -1 while nothing was accepted
        self._ring = [0] * _RING_WORDS
        self.limit = limit

    @property
    def newest(self) -> int | None:
        return self._newest if self._newest >= 0 else None

    def check(self, counter: int) -> bool:
        """Whether ``counter`` would be accepted now (no state change)."""
        if counter > self._newest:
            return counter < self.limit
        if self._newest - counter >= WINDOW_SIZE:
            return False
        return not (self._ring[(counter >> 6) % _RING_WORDS] >> (counter & 63)) & 1

    def commit(self, counter: int) -> None:
        """Record ``counter`` as seen; the caller has just had :meth:`check` say yes."""
        ring = self._ring
        word = counter >> 6
        if counter > self._newest:
            newest_word = self._newest >> 6
            if word != newest_word:  # entering new words: clear them (once per 64 in order)
                for skipped in range(newest_word + 1, min(word, newest_word + _RING_WORDS) + 1):
                    ring[skipped % _RING_WORDS] = 0
            self._newest = counter
        ring[word % _RING_WORDS] |= 1 << (counter & 63)

    def accept(self, counter: int) -> bool:
        """Check and commit in one step (for callers with nothing to verify in between)."""
        if not self.check(counter):
            return False
        self.commit(counter)
        return True
