"""Analysis of training runs: load run directories, score, aggregate with rliable, tables and plots.

Entry point: ``python -m sparse_rl.analyze RUNS_DIR``. Imports neither stable-baselines3 nor gymnasium.
"""

from analysis.aggregate import (
    BOOTSTRAP_REPS,
    CI_LEVEL,
    MATCHED_METHOD,
    Estimate,
    ScoreMatrix,
    improvement_over_matched,
    iqm,
    mean_ci,
    performance_profiles,
    probability_of_improvement,
    score_matrix,
    seeded_numpy,
)
from analysis.curves import curve_frame, mean_curves
from analysis.discovery import find_run_dirs
from analysis.frame import ordered_labels, scores_frame
from analysis.loading import check_runs, load_run, load_runs
from analysis.normalize import NORMALIZATIONS, NormalizationError, normalize
from analysis.records import Issue, RunRecord, run_label
from analysis.report import AnalysisResult, NoUsableRunsError, analyze
from analysis.tables import aggregate_table, markdown_table, per_env_table, runs_table
from experiment.layout import LAST_FRACTION, last_fraction_mean, n_last

__all__ = [
    "BOOTSTRAP_REPS",
    "CI_LEVEL",
    "LAST_FRACTION",
    "MATCHED_METHOD",
    "NORMALIZATIONS",
    "AnalysisResult",
    "Estimate",
    "Issue",
    "NoUsableRunsError",
    "NormalizationError",
    "RunRecord",
    "ScoreMatrix",
    "aggregate_table",
    "analyze",
    "check_runs",
    "curve_frame",
    "find_run_dirs",
    "improvement_over_matched",
    "iqm",
    "last_fraction_mean",
    "load_run",
    "load_runs",
    "markdown_table",
    "mean_ci",
    "mean_curves",
    "n_last",
    "normalize",
    "ordered_labels",
    "per_env_table",
    "performance_profiles",
    "probability_of_improvement",
    "run_label",
    "runs_table",
    "score_matrix",
    "scores_frame",
    "seeded_numpy",
]
