"""N:M training recipes that keep gradients flowing to pruned weights: mask decay, structure decay, SR-STE.

Sources:

- SR-STE: Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch"
  (arXiv:2102.04010), eq. 6: the forward uses the N:M-masked weight, the backward passes the gradient straight
  through to the dense weight (STE), and the update adds ``λ_W · (¬mask ⊙ w)`` (the sparse-refined term).
- Pruning mask decay and sparse structure decay: Kao et al. 2022, "Training Recipe for N:M Structured Sparsity
  with Decaying Pruning Mask" (arXiv:2209.07617), extended by Bambhaniya et al. 2024, "Progressive Gradient Flow
  for Robust N:M Sparsity Training" (arXiv:2402.04744), whose public code (``sparse_ops.py`` of
  abhibambhaniya/progressive_gradient_flow_nm_sparsity) multiplies pruned positions by a factor ``β`` (``w ⊙ (m +
  β(1 − m))``) decayed linearly (``1 − c·Δt``) or exponentially (``exp(−c·Δt)``), passes the gradient straight
  through, and splits the steps between a dense warm-up and a fine-tune into equal structure stages.

The recipe runs on a dense latent copy of each layer's weight (held by the controller) while the layer itself holds
the effective weight ``latent ⊙ (m + β(1 − m))`` (docs/design.md decision 33): the optimizer steps the latent
(:class:`~sparse_rl.controller.TopologyController` swaps it in around every optimizer step), so SB3 keeps its
plain layers and training loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparse_rl.registry import Registry
from sparse_rl.structure import NMStructure

if TYPE_CHECKING:
    from sparse_rl.config import SparsityConfig

Stage = NMStructure | None  # None: dense (every position active)
DENSE_STAGE = "dense"
NO_MASK_DECAY = "none"

# mask decay: factor β of the pruned positions from (rate, window progress now, progress at the latest update point)
MaskDecayFn = Callable[[float, float, float], float]
MASK_DECAYS: Registry[MaskDecayFn] = Registry("mask decay")
# structure decay: the stages (after the dense warm-up) that end at the target structure
STRUCTURE_DECAYS: Registry[Callable[[NMStructure], list[Stage]]] = Registry("structure decay")


@MASK_DECAYS.register(NO_MASK_DECAY)
def no_mask_decay(rate: float, progress: float, point_progress: float) -> float:
    """Hard masks: pruned positions are zero at once (β = 0)."""
    return 0.0


@MASK_DECAYS.register("step")
def step_mask_decay(rate: float, progress: float, point_progress: float) -> float:
    """β = max(0, 1 − rate·p_k), ``p_k`` the window progress at the latest update point: constant between updates."""
    return max(0.0, 1.0 - rate * point_progress)


@MASK_DECAYS.register("linear")
def linear_mask_decay(rate: float, progress: float, point_progress: float) -> float:
    """β = max(0, 1 − rate·p) every step (the PGF code's ``1 − c·Δt`` with Δt in fractions of the window)."""
    return max(0.0, 1.0 - rate * progress)


@MASK_DECAYS.register("exponential")
def exponential_mask_decay(rate: float, progress: float, point_progress: float) -> float:
    """β = exp(−rate·p) every step (the PGF code's ``exp(−c·Δt)`` with Δt in fractions of the window)."""
    return math.exp(-rate * progress)


@STRUCTURE_DECAYS.register("sparsify")
def sparsify_stages(target: NMStructure) -> list[Stage]:
    """(M−1):M, then N halved each stage down to the target: 1:8 → 7:8, 4:8, 2:8, 1:8 (Kao et al. 2022)."""
    stages, n = [NMStructure(target.m - 1, target.m)], target.m // 2
    while n > target.n:
        if n < target.m - 1:
            stages.append(NMStructure(n, target.m))
        n //= 2
    if stages[-1] != target:
        stages.append(target)
    return stages


@STRUCTURE_DECAYS.register("densify")
def densify_stages(target: NMStructure) -> list[Stage]:
    """N:16M, N:4M, N:2M, N:M: 1:8 → 1:128, 1:32, 1:16, 1:8 (Kao et al. 2022)."""
    return [NMStructure(target.n, target.m * factor) for factor in (16, 4, 2, 1)]


@STRUCTURE_DECAYS.register("fine")
def fine_stages(target: NMStructure) -> list[Stage]:
    """16N:16M, 8N:8M, ..., N:M (same density, larger groups first): 1:8 → 16:128, 8:64, 4:32, 2:16, 1:8."""
    return [NMStructure(target.n * factor, target.m * factor) for factor in (16, 8, 4, 2, 1)]


def parse_stages(value: str | Sequence[str] | None, target: NMStructure) -> tuple[Stage, ...]:
    """The structure stages of ``sparsity.structure_decay``: a named schedule, a list (``[dense, 4:8, 2:8]``, or the
    same comma-separated), or ``None`` (one stage, the target). The last stage must be the target structure."""
    if value is None:
        return (target,)
    if isinstance(value, str) and value in STRUCTURE_DECAYS:
        return tuple(STRUCTURE_DECAYS.get(value)(target))
    items = [item.strip() for item in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    if len(items) < 2 and isinstance(value, str):
        raise ValueError(
            f"unknown sparsity.structure_decay '{value}'; valid choices: {', '.join(STRUCTURE_DECAYS.names())} "
            "or a list of stages ending at sparsity.structure, e.g. [dense, 4:8, 2:8]"
        )
    stages = tuple(None if item == DENSE_STAGE else NMStructure.parse(item) for item in items)
    if stages[-1] != target:
        raise ValueError(f"sparsity.structure_decay must end at sparsity.structure={target}, got {items[-1]}")
    return stages


@dataclass(frozen=True)
class NMRecipe:
    """A configured recipe: the structure stages over the window, the mask decay, the SR-STE coefficient."""

    stages: tuple[Stage, ...]
    mask_decay: str
    rate: float
    sr_ste_lambda: float  # 0: plain straight-through gradient

    @classmethod
    def from_config(cls, config: SparsityConfig) -> NMRecipe | None:
        """The recipe ``config`` asks for, or ``None`` (no recipe option set: the method's hard masks)."""
        if not recipe_requested(config):
            return None
        return cls(
            parse_stages(config.structure_decay, config.nm),
            config.mask_decay,
            float(config.mask_decay_rate),
            float(config.sr_ste_lambda) if config.sr_ste else 0.0,
        )

    def stage(self, progress: float) -> Stage:
        """The stage at window progress ``progress`` ∈ [0, 1]: equal shares of the window; the target from 1."""
        return self.stages[min(int(progress * len(self.stages)), len(self.stages) - 1)]

    def factor(self, progress: float, point_progress: float) -> float:
        """β at window progress ``progress`` (``point_progress``: at the latest update point); 0 from the end."""
        if progress >= 1.0:
            return 0.0
        return float(MASK_DECAYS.get(self.mask_decay)(self.rate, progress, point_progress))


def recipe_requested(config: SparsityConfig) -> bool:
    """Whether ``config`` sets any recipe option (mask decay, structure decay, SR-STE)."""
    return bool(config.sr_ste) or config.mask_decay != NO_MASK_DECAY or config.structure_decay is not None
