"""The table of scored runs: one row per usable run."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis.records import RunRecord

SCORE_COLUMNS = ["agent", "env", "method", "sparsity", "label", "seed", "raw_score", "score", "active_params", "path"]


def scores_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """Scored runs (``usable_for_scores``) as a DataFrame; ``score`` starts equal to ``raw_score``."""
    rows = [
        {
            **r.identity(),
            "raw_score": r.score,
            "score": r.score,
            "active_params": float("nan") if r.active_params is None else float(r.active_params),
            "path": str(r.path),
        }
        for r in runs
        if r.usable_for_scores
    ]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


# Display order of methods (Graesser et al. 2022); unknown methods follow alphabetically.
METHOD_ORDER = ("dense", "dense_matched", "static", "set", "rigl", "prune")


def method_rank(method: str) -> tuple[int, str]:
    """Sort key placing known methods in paper order."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def ordered_labels(frame: pd.DataFrame) -> list[str]:
    """Labels in ``frame`` sorted by sparsity, then method (paper order)."""
    pairs = frame[["label", "method", "sparsity"]].drop_duplicates()
    ordered = sorted(pairs.itertuples(index=False), key=lambda r: (r.sparsity, method_rank(r.method)))
    return [r.label for r in ordered]
