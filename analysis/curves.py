"""Learning curves: per-eval mean return of every run, and their mean over seeds with a bootstrap band.

The band is a percentile bootstrap CI of the mean over seeds (seeds resampled with replacement): unlike a
t-interval it never leaves the range the seeds span (with 2 seeds it is at most their min..max), and it is
NaN for a single seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.aggregate import BOOTSTRAP_REPS, CI_LEVEL
from analysis.records import RunRecord

CURVE_COLUMNS = ["agent", "env", "method", "sparsity", "label", "seed", "step", "return"]
BAND_DESCRIPTION = f"{CI_LEVEL:.0%} percentile bootstrap CI of the mean over seeds"


def curve_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per (usable run, evaluation): the mean episode return at that env step."""
    parts = [
        pd.DataFrame(
            {
                **r.identity(),
                "step": r.timesteps,
                "return": r.returns,
            }
        )
        for r in runs
        if r.usable_for_curves
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CURVE_COLUMNS)


def bootstrap_mean_ci(values: np.ndarray, rng: np.random.Generator, reps: int = BOOTSTRAP_REPS) -> tuple[float, float]:
    """Percentile bootstrap CI (CI_LEVEL) of the mean of ``values``; NaN below two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(reps, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - CI_LEVEL / 2, 0.5 + CI_LEVEL / 2])
    return float(low), float(high)


def mean_curves(curves: pd.DataFrame, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> pd.DataFrame:
    """Per label and step: mean over seeds, seed count and the :data:`BAND_DESCRIPTION` (``low``, ``high``).

    Runs still in progress contribute to the steps they reached, so late steps may average fewer seeds.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for (label, step), values in curves.groupby(["label", "step"], sort=True)["return"]:
        low, high = bootstrap_mean_ci(values.to_numpy(), rng, reps)
        rows.append({"label": label, "step": step, "mean": values.mean(), "count": len(values), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["label", "step", "mean", "count", "low", "high"])
