"""sparse_rl: sparse neural networks for deep reinforcement learning.

The core is this package minus its three command modules, and depends on torch only: masks, distributions,
schedules, updaters, configuration and the :class:`TopologyController`. The commands ``python -m sparse_rl.run``,
``sparse_rl.analyze`` and ``sparse_rl.evaluate`` are thin: they hand over to ``experiment/`` (plans, training runs,
run directories, noise robustness) and ``analysis/`` (reading run directories), and nothing in the core imports them.
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
