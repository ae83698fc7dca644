"""The sparse core's configuration: one dataclass, validated, with the paper's defaults per method.

``SparsityConfig(method="rigl", sparsity=0.9)`` is RigL as the paper ran it; every field left out takes the
method's default from :data:`METHOD_DEFAULTS`, which each updater states (``Updater.defaults`` in
:mod:`sparse_rl.updaters`, citing its sources). Those defaults are the values of ``configs/sparsity/<method>.yaml``
(which the command line uses); a test keeps the two equal. Agent-specific
values from the paper's tables (e.g. DQN's or PPO's update interval) live in ``configs/agent_sparsity/`` and are
passed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from sparse_rl.distributions import DISTRIBUTIONS
from sparse_rl.nm_recipes import MASK_DECAYS, parse_stages, recipe_requested
from sparse_rl.schedules import DROP_FRACTION_SCHEDULES
from sparse_rl.structure import NMStructure
from sparse_rl.updaters import UPDATERS

OPTIONAL_FIELDS = {"structure", "structure_decay"}  # None is a valid value, not a missing default
STRUCTURE_SPARSITY_TOLERANCE = 5e-4  # 1 - N/M stated to 3 decimals passes (1:3 as sparsity 0.667)
# Each method's paper defaults, as its updater states them (Updater.defaults, sources cited there); in registration
# order. Mirrors configs/sparsity/<method>.yaml (tests/test_readme.py keeps the two equal).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(cls.defaults) for name, cls in UPDATERS.items()}
# methods that mask a network (Updater.sparse), in registration order
SPARSE_METHODS: tuple[str, ...] = tuple(name for name, cls in UPDATERS.items() if cls.sparse)
# methods that accept sparsity.structure (Updater.accepts_structure), in registration order
STRUCTURED_METHODS: tuple[str, ...] = tuple(name for name, cls in UPDATERS.items() if cls.accepts_structure)
# methods that run the N:M recipes (Updater.accepts_recipe: mask decay, structure decay, SR-STE; sparse_rl.nm_recipes)
RECIPE_METHODS: tuple[str, ...] = tuple(name for name, cls in UPDATERS.items() if cls.accepts_recipe)


@dataclass
class SparsityConfig:
    """What the :class:`~sparse_rl.controller.TopologyController` needs to know about the method.

    Fields left as ``None`` take ``method``'s paper default (:data:`METHOD_DEFAULTS`) on construction.
    """

    method: str  # updater registry name: dense, static, set, rigl, prune
    sparsity: float | None = None  # target fraction of zero weights per group, in [0, 1)
    distribution: str | None = None  # uniform, er, erk
    update_interval: int | None = None  # steps between topology updates (mask updates or pruning steps)
    start_fraction: float | None = None  # first update/pruning step, as a fraction of the run
    end_fraction: float | None = None  # last update/pruning step, as a fraction of the run
    drop_fraction: float | None = None  # SET/RigL initial fraction of active weights dropped per update
    drop_fraction_schedule: str | None = None  # constant or cosine
    sparse_init: bool | None = None  # sparsity-aware init of the active weights (sparse_rl.sparse_init)
    prune_power: int | None = None  # exponent of the Zhu–Gupta pruning schedule
    group_sparsity: dict[str, float] = field(default_factory=dict)  # per-group overrides, e.g. {"actor": 0.8}
    structure: str | None = None  # N:M structured sparsity, e.g. "2:4" (sparse_rl.structure); None: unstructured
    # N:M recipes (sparse_rl.nm_recipes; docs/design.md decision 33), prune with a structure only:
    structure_decay: str | list[str] | None = None  # sparsify, densify, fine, or a list of stages ending at `structure`
    mask_decay: str | None = None  # none, step, linear, exponential: the factor of pruned positions, 1 → 0
    mask_decay_rate: float | None = None  # the decay's rate per window (1: linear decay reaches 0 at the window's end)
    sr_ste: bool | None = None  # SR-STE: straight-through gradient plus sr_ste_lambda·(¬mask ⊙ w)
    sr_ste_lambda: float | None = None  # SR-STE's λ_W

    def __post_init__(self) -> None:
        defaults = METHOD_DEFAULTS.get(self.method, {})  # an unknown method is reported by validate()
        for f in fields(self):
            if getattr(self, f.name) is None and f.name in defaults:
                setattr(self, f.name, defaults[f.name])

    @property
    def nm(self) -> NMStructure | None:
        """The parsed :attr:`structure` (``None``: unstructured)."""
        return NMStructure.parse(self.structure)

    def sparsity_of(self, group: str) -> float:
        """The target sparsity of ``group`` (its override, else the global one)."""
        return self.group_sparsity.get(group, self.sparsity)

    def validate(self) -> None:
        """Raise ``ValueError`` with one clear line for an impossible configuration."""
        UPDATERS.get(self.method)
        missing = [f.name for f in fields(self) if getattr(self, f.name) is None and f.name not in OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"method '{self.method}' has no default for {', '.join(missing)}; pass them explicitly")
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
        self._validate_structure()
        self._validate_recipe()

    def _validate_structure(self) -> None:
        """N:M fixes every layer's density at N/M: a sparse method, and every stated sparsity equal to 1 - N/M."""
        nm = self.nm
        if nm is None:
            return
        if self.method not in STRUCTURED_METHODS:
            raise ValueError(f"sparsity.structure={nm} needs a sparse method; valid choices: {', '.join(STRUCTURED_METHODS)}")
        for name, value in {"sparsity": self.sparsity, **self.group_sparsity}.items():
            if abs(value - nm.sparsity) > STRUCTURE_SPARSITY_TOLERANCE:
                raise ValueError(
                    f"sparsity.structure={nm} fixes every layer's density at {nm.n}/{nm.m}: set sparsity.{name}="
                    f"{nm.sparsity:g} (got {value})"
                )

    def _validate_recipe(self) -> None:
        """The N:M recipes need a method that runs them (prune) and a target ``structure``."""
        MASK_DECAYS.get(self.mask_decay)
        if self.mask_decay_rate < 0:
            raise ValueError(f"mask_decay_rate must be >= 0, got {self.mask_decay_rate}")
        if self.sr_ste_lambda < 0:
            raise ValueError(f"sr_ste_lambda must be >= 0, got {self.sr_ste_lambda}")
        if not recipe_requested(self):
            return
        if self.method not in RECIPE_METHODS:
            raise ValueError(
                f"sparsity.mask_decay/structure_decay/sr_ste are N:M recipes of a dense-to-sparse method; "
                f"valid choices: {', '.join(RECIPE_METHODS)} (got '{self.method}')"
            )
        if self.nm is None:
            raise ValueError("sparsity.mask_decay/structure_decay/sr_ste need sparsity.structure=N:M (e.g. 2:4, 1:8)")
        parse_stages(self.structure_decay, self.nm)
