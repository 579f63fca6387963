"""The bond core (sans-I/O): scheduling, reordering and path liveness over KCP paths.

The shell builds one :class:`Bond` per session from a :class:`BondConfig` and drives it
with bytes and ``now``; see :mod:`ratbond.bond.bond` for the contract.
"""

from ratbond.bond.bond import (
    Bond,
    BondClosedError,
    BondError,
    PathExistsError,
    UnknownPathError,
)
from ratbond.bond.config import BondConfig
from ratbond.bond.events import BondEvent, PathDown, PathUp, PeerClosed
from ratbond.bond.reorder import ReorderStats
from ratbond.bond.stats import BondSnapshot, PathSnapshot

__all__ = [
    "Bond",
    "BondClosedError",
    "BondConfig",
    "BondError",
    "BondEvent",
    "BondSnapshot",
    "PathDown",
    "PathExistsError",
    "PathSnapshot",
    "PathUp",
    "PeerClosed",
    "ReorderStats",
    "UnknownPathError",
]
