"""sparse_rl: sparse neural networks for deep reinforcement learning.

The core (this package minus its entry points) depends on torch only: masks, distributions, schedules,
updaters and the :class:`TopologyController`.
"""

from sparse_rl.config import SparsityConfig
from sparse_rl.controller import NonFiniteError, SparseGroup, SparsityInvariantError, TopologyController
from sparse_rl.distributions import DISTRIBUTIONS, allocate
from sparse_rl.updaters import UPDATERS, Updater

__all__ = [
    "DISTRIBUTIONS",
    "UPDATERS",
    "NonFiniteError",
    "SparseGroup",
    "SparsityConfig",
    "SparsityInvariantError",
    "TopologyController",
    "Updater",
    "allocate",
]
