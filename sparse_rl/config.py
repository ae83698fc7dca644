"""The sparse core's configuration: one dataclass, validated, with no defaults for hyperparameters.

Values come from ``configs/sparsity/*.yaml`` (each cites its source); tests build them explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SparsityConfig:
    """What the :class:`~sparse_rl.controller.TopologyController` needs to know about the method."""

    method: str  # updater registry name: dense, static, set, rigl, prune
    sparsity: float  # target fraction of zero weights per group, in [0, 1)
    distribution: str  # uniform, er, erk
    update_interval: int  # steps between topology updates (mask updates or pruning steps)
    start_fraction: float  # first update/pruning step, as a fraction of the run
    end_fraction: float  # last update/pruning step, as a fraction of the run
    drop_fraction: float  # SET/RigL initial fraction of active weights dropped per update
    drop_fraction_schedule: str  # constant or cosine
    sparse_init: bool  # unit-scaled sparsity-aware init of the active weights (paper §3.4)
    prune_power: int  # exponent of the Zhu–Gupta pruning schedule
    group_sparsity: dict[str, float] = field(default_factory=dict)  # per-group overrides, e.g. {"actor": 0.8}

    def sparsity_of(self, group: str) -> float:
        """The target sparsity of ``group`` (its override, else the global one)."""
        return self.group_sparsity.get(group, self.sparsity)

    def validate(self) -> None:
        """Raise ``ValueError`` with one clear line for an impossible configuration."""
        from sparse_rl.distributions import DISTRIBUTIONS
        from sparse_rl.schedules import DROP_FRACTION_SCHEDULES
        from sparse_rl.updaters import UPDATERS

        UPDATERS.get(self.method)
        DISTRIBUTIONS.get(self.distribution)
        DROP_FRACTION_SCHEDULES.get(self.drop_fraction_schedule)
        for name, value in {"sparsity": self.sparsity, **{f"{g} sparsity": s for g, s in self.group_sparsity.items()}}.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")
        if self.update_interval <= 0:
            raise ValueError(f"update_interval must be a positive number of steps, got {self.update_interval}")
        if not 0.0 <= self.start_fraction <= self.end_fraction <= 1.0:
            raise ValueError(
                f"need 0 <= start_fraction <= end_fraction <= 1, got start={self.start_fraction}, end={self.end_fraction}"
            )
        if self.prune_power < 1:
            raise ValueError(f"prune_power must be >= 1, got {self.prune_power}")
