"""Learning curves: per-eval mean return of every run, and their mean over seeds with a 95% t-interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from sparse_rl.analysis.aggregate import CI_LEVEL
from sparse_rl.analysis.records import RunRecord

CURVE_COLUMNS = ["agent", "env", "method", "sparsity", "label", "seed", "step", "return"]


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


def mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per label and step: mean over seeds, seed count and the CI_LEVEL t-interval (NaN below two seeds).

    Runs still in progress contribute to the steps they reached, so late steps may average fewer seeds.
    """
    grouped = curves.groupby(["label", "step"])["return"]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    n = out["count"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + CI_LEVEL / 2, n - 1) * out["std"].to_numpy() / np.sqrt(n)
    out["low"] = out["mean"] - half
    out["high"] = out["mean"] + half
    return out
