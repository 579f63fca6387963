"""Events a :class:`~ratbond.bond.Bond` queues for its shell (drained by ``next_event``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PathUp:
    """Something authenticated arrived on a path that was not up: it carries traffic now."""

    path_id: int


@dataclass(frozen=True, slots=True)
class PathDown:
    """A live path left the bond; its flows moved to the survivors.

    ``reason`` is one of the ``DOWN_*`` strings of :mod:`ratbond.bond.path`, or the
    caller's own reason for :meth:`~ratbond.bond.Bond.remove_path`.
    """

    path_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer said CLOSE: every path is down and the session is over."""


BondEvent = PathUp | PathDown | PeerClosed
