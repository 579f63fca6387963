"""The bond core (sans-I/O): scheduling, reordering and path liveness over KCP paths.

The shell builds one :class:`Bond` per session from a :class:`BondConfig` and drives it
with bytes and ``now``; see :mod:`ratbond.bond.bond` for the contract.  Modules:
``bond`` (the object), ``path`` (one path: :class:`PathState`, liveness, pacing),
``rate`` (:class:`RateController`: the capacity estimate and what derives from it),
``scheduler`` (which path), ``reorder`` (receiver order and duplicates), ``flow`` (flow
keys, packet classes), ``messages`` (the codec, :class:`Drop` reasons), ``stats``.
"""

from ratbond.bond.bond import (
    Bond,
    BondClosedError,
    BondError,
    PathExistsError,
    UnknownPathError,
)
from ratbond.bond.config import BondConfig, LinkRate
from ratbond.bond.events import BondEvent, PathDown, PathUp, PeerClosed
from ratbond.bond.messages import Drop
from ratbond.bond.path import PathState
from ratbond.bond.rate import RateController, RatePhase
from ratbond.bond.reorder import ReorderStats
from ratbond.bond.stats import BondSnapshot, PathSnapshot

__all__ = [
    "Bond",
    "BondClosedError",
    "BondConfig",
    "BondError",
    "BondEvent",
    "BondSnapshot",
    "Drop",
    "LinkRate",
    "PathDown",
    "PathExistsError",
    "PathSnapshot",
    "PathState",
    "PathUp",
    "PeerClosed",
    "RateController",
    "RatePhase",
    "ReorderStats",
    "UnknownPathError",
]
