"""Per-run score: the mean of the last 10% of evaluation points (paper_facts §1)."""

from __future__ import annotations

import math

import numpy as np

# Paper §1: "the mean of the last 10% of evaluation points" (TF-Agents flag average_last_fraction = 0.1,
# Atari AVG_REWARD_FRAC = 0.1). The reference takes int(0.1 · n) points; we take at least one.
LAST_FRACTION = 0.1
_FLOOR_SLACK = 1e-9  # 0.1 · 30 is 3.0000000000000004 in floating point; keep int(0.1 · n) exact


def n_last(n_evals: int, fraction: float = LAST_FRACTION) -> int:
    """How many final evaluation points the score averages: ``max(1, floor(fraction · n_evals))``."""
    if n_evals < 1:
        raise ValueError("no evaluation points")
    return min(n_evals, max(1, math.floor(fraction * n_evals + _FLOOR_SLACK)))


def last_fraction_mean(returns: np.ndarray, fraction: float = LAST_FRACTION) -> float:
    """Mean of the last ``fraction`` of the per-evaluation mean returns (at least one point)."""
    returns = np.asarray(returns, dtype=float)
    return float(np.mean(returns[-n_last(len(returns), fraction) :]))
