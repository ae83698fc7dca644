"""Score normalisation: raw returns, or divided by the standard dense network's mean score (Graesser et al. 2022, Fig. 1)."""

from __future__ import annotations

import pandas as pd

NORMALIZATIONS = ("raw", "dense")
# Graesser et al. 2022 (Fig. 1): MuJoCo scores are divided by the average return of the Dense:100% agent of the same env.
REFERENCE_METHOD = "dense"
REFERENCE_SPARSITY = 0.0


class NormalizationError(ValueError):
    """Normalisation is impossible for some agent/env (no reference run, or a non-positive reference)."""


def dense_reference(frame: pd.DataFrame) -> pd.Series:
    """Mean raw score of the standard dense network (``dense`` at sparsity 0) per (agent, env)."""
    ref = frame[(frame["method"] == REFERENCE_METHOD) & (frame["sparsity"] == REFERENCE_SPARSITY)]
    return ref.groupby(["agent", "env"])["raw_score"].mean()


def normalize(frame: pd.DataFrame, mode: str) -> pd.DataFrame:
    """A copy of ``frame`` whose ``score`` column is ``raw_score`` in the units of ``mode`` (``raw`` or ``dense``)."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {mode!r}")
    out = frame.copy()
    out["score"] = out["raw_score"]
    if mode == "raw" or out.empty:
        return out
    ref = dense_reference(out)
    keys = pd.MultiIndex.from_frame(out[["agent", "env"]])
    missing = sorted({f"{a}/{e}" for a, e in keys if (a, e) not in ref.index})
    if missing:
        need = f"a completed '{REFERENCE_METHOD}' run at sparsity {REFERENCE_SPARSITY}"
        raise NormalizationError(f"--normalize dense needs {need} for: {', '.join(missing)}")
    bad = sorted(f"{a}/{e} ({v:.4g})" for (a, e), v in ref.items() if v <= 0)
    if bad:
        raise NormalizationError(f"dense reference score is not positive for: {', '.join(bad)}; use --normalize raw")
    out["score"] = out["raw_score"].to_numpy() / ref.reindex(keys).to_numpy()
    return out
