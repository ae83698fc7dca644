"""When topology changes, and by how much.

Sources: the cosine drop fraction of Evci et al. 2020 (RigL, arXiv 1911.11134) §3, ``CosineUpdateSchedule`` in
google-research/rigl ``rigl/rigl_tf2/mask_updaters.py``; the cubic pruning schedule of Zhu & Gupta 2017, run by
tfmot's ``PolynomialDecay`` in ``rigl/rl/tfagents/tf_sparse_utils.py``.

All times are fractions of the run's total step count, so a schedule survives a change of budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from sparse_rl.registry import Registry

DropFractionFn = Callable[[float, float], float]
DROP_FRACTION_SCHEDULES: Registry[DropFractionFn] = Registry("drop-fraction schedule")


@DROP_FRACTION_SCHEDULES.register("constant")
def constant_drop_fraction(initial: float, progress: float) -> float:
    """The initial drop fraction throughout (Mocanu et al. 2018, SET)."""
    return initial


@DROP_FRACTION_SCHEDULES.register("cosine")
def cosine_drop_fraction(initial: float, progress: float) -> float:
    """f(t) = f0/2 · (1 + cos(π · t / T_end)) (RigL, Evci et al. 2020, eq. 1); 0 at the end of the window."""
    return 0.5 * initial * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def polynomial_sparsity(final: float, progress: float, power: int, initial: float = 0.0) -> float:
    """Zhu–Gupta gradual pruning: s_t = s_f + (s_0 − s_f)(1 − p)^power, p clipped to [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** power


@dataclass(frozen=True)
class UpdateWindow:
    """Update points ``start + k·interval`` (k ≥ 1; k ≥ 0 with ``include_start``) up to ``end``, plus ``end`` itself;
    in absolute steps."""

    start: int
    end: int
    interval: int
    include_start: bool = False  # ``start`` itself is a point too (the N:M recipes mask from the warm-up's end)

    @classmethod
    def from_fractions(cls, total_steps: int, start_fraction: float, end_fraction: float, interval: int) -> UpdateWindow:
        if interval <= 0:
            raise ValueError(f"update_interval must be positive, got {interval}")
        if not 0.0 <= start_fraction <= end_fraction <= 1.0:
            raise ValueError(f"need 0 <= start_fraction <= end_fraction <= 1, got {start_fraction}, {end_fraction}")
        return cls(round(start_fraction * total_steps), round(end_fraction * total_steps), interval)

    def progress(self, t: int) -> float:
        """Position of ``t`` within the window, in [0, 1]."""
        if self.end <= self.start:
            return 1.0
        return min(max((t - self.start) / (self.end - self.start), 0.0), 1.0)

    def latest_point(self, t: int) -> int | None:
        """The last update point ≤ ``t`` (``None`` before the first one)."""
        if t >= self.end:
            return self.end if self.end > self.start or self.include_start else None
        k = (t - self.start) // self.interval
        return self.start + k * self.interval if k >= (0 if self.include_start else 1) else None
