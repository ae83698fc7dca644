"""Result tables as DataFrames: per env, aggregate over envs, and every run with its issues."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import aggregate as agg
from analysis.frame import ordered_labels
from analysis.records import RunRecord

PER_ENV_COLUMNS = [
    "agent",
    "env",
    "label",
    "method",
    "sparsity",
    "n_seeds",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "active_params",
]
AGGREGATE_COLUMNS = [
    "agent",
    "label",
    "method",
    "sparsity",
    "iqm",
    "ci_low",
    "ci_high",
    "n_envs",
    "n_seeds",
    "n_runs",
    "poi_vs_matched",
    "poi_ci_low",
    "poi_ci_high",
    "poi_n_envs",
]
RUN_COLUMNS = ["path", "agent", "env", "label", "seed", "status", "n_evals", "last_step", "score", "usable", "issues"]


def per_env_table(frame: pd.DataFrame, reps: int = agg.BOOTSTRAP_REPS, seed: int = 0) -> pd.DataFrame:
    """Per agent, env and label: seeds, mean score with a bootstrap CI, std and mean active parameters."""
    rows = []
    for agent, by_agent in frame.groupby("agent", sort=True):
        for label in ordered_labels(by_agent):
            for env, cell in by_agent[by_agent["label"] == label].groupby("env", sort=True):
                est = agg.mean_ci(cell["score"].to_numpy(), reps, seed)
                first = cell.iloc[0]
                rows.append(
                    {
                        "agent": agent,
                        "env": env,
                        "label": label,
                        "method": first["method"],
                        "sparsity": first["sparsity"],
                        "n_seeds": len(cell),
                        "mean": est.value,
                        "std": float(cell["score"].std(ddof=1)) if len(cell) > 1 else float("nan"),
                        "ci_low": est.low,
                        "ci_high": est.high,
                        "active_params": cell["active_params"].mean(),
                    }
                )
    return pd.DataFrame(rows, columns=PER_ENV_COLUMNS)


def aggregate_table(
    frame: pd.DataFrame, reps: int = agg.BOOTSTRAP_REPS, seed: int = 0, progress: bool = False
) -> pd.DataFrame:
    """Per agent and label: IQM over envs × seeds with a CI, and P(improvement) over ``dense_matched``."""
    rows = []
    for agent, by_agent in frame.groupby("agent", sort=True):
        labels = ordered_labels(by_agent)
        for label in tqdm(labels, desc=f"bootstrap {agent}", unit="label", disable=not progress, file=sys.stderr):
            first = by_agent[by_agent["label"] == label].iloc[0]
            matrix = agg.score_matrix(by_agent, label)
            est = agg.iqm(matrix, reps, seed)
            matched = agg.matched_label(first["method"], first["sparsity"], labels)
            poi, poi_envs = (
                agg.improvement_over_matched(by_agent, label, matched, reps, seed) if matched else (agg.NAN_ESTIMATE, 0)
            )
            rows.append(
                {
                    "agent": agent,
                    "label": label,
                    "method": first["method"],
                    "sparsity": first["sparsity"],
                    "iqm": est.value,
                    "ci_low": est.low,
                    "ci_high": est.high,
                    "n_envs": len(matrix.envs),
                    "n_seeds": matrix.n_seeds,
                    "n_runs": matrix.n_runs,
                    "poi_vs_matched": poi.value,
                    "poi_ci_low": poi.low,
                    "poi_ci_high": poi.high,
                    "poi_n_envs": poi_envs,
                }
            )
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


def _usable(run: RunRecord) -> str:
    if run.usable_for_scores:
        return "scores+curves"
    return "curves" if run.usable_for_curves else "no"


def runs_table(runs: Sequence[RunRecord], root: str | None = None) -> pd.DataFrame:
    """Every run found, its status, what it is usable for and all its issues."""
    rows = [
        {
            "path": str(r.path.relative_to(root)) if root and r.path.is_relative_to(root) else str(r.path),
            "agent": r.agent,
            "env": r.env,
            "label": r.label,
            "seed": r.seed,
            "status": r.status,
            "n_evals": len(r.returns),
            "last_step": int(r.timesteps[-1]) if len(r.timesteps) else None,
            "score": r.score,
            "usable": _usable(r),
            "issues": r.reasons(("broken", "incomplete", "note")),
        }
        for r in runs
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _cell(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; floats to ``digits`` significant digits, NaN as blank."""
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])
