"""rliable statistics over the (runs = seeds) × (tasks = envs) score matrix of each method label.

IQM with stratified-bootstrap CIs, probability of improvement over the width-matched dense network and
performance profiles (Agarwal et al. 2021; Graesser et al. 2022, Fig. 1: IQM with rliable, 95% CIs).
rliable 1.2.0's bootstrap draws from numpy's global RNG and ignores ``random_state``, so every estimate
here runs under :func:`seeded_numpy`: reproducible, and independent of which other labels exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rliable import library, metrics

from analysis.records import run_label

CI_LEVEL = 0.95  # Graesser et al. 2022: "All plots show 95% confidence intervals"
BOOTSTRAP_REPS = 2000  # stratified bootstrap replications (rliable's default for performance profiles)
PROFILE_POINTS = 51  # thresholds τ at which performance profiles are evaluated
MATCHED_METHOD = "dense_matched"  # Graesser et al. 2022: the dense network width-scaled to the sparse active count


@contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (which rliable's bootstrap uses) and restore its state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval."""

    value: float
    low: float
    high: float


NAN_ESTIMATE = Estimate(float("nan"), float("nan"), float("nan"))


@dataclass(frozen=True)
class ScoreMatrix:
    """Scores of one label as rliable wants them: shape (seeds, envs), the same seed count for every env.

    With unequal seed counts per env, each env keeps its ``n_seeds`` lowest seeds; ``n_runs`` counts all.
    """

    label: str
    envs: tuple[str, ...]
    scores: np.ndarray
    n_runs: int

    @property
    def n_seeds(self) -> int:
        """Seeds per env actually used."""
        return self.scores.shape[0]


def score_matrix(frame: pd.DataFrame, label: str, envs: Sequence[str] | None = None) -> ScoreMatrix:
    """The (seeds × envs) matrix of ``label`` in ``frame`` (one agent), over ``envs`` or every env it has."""
    rows = frame[frame["label"] == label]
    envs = tuple(sorted(rows["env"].unique())) if envs is None else tuple(envs)
    columns = [rows[rows["env"] == env].sort_values("seed")["score"].to_numpy(dtype=float) for env in envs]
    n = min((len(c) for c in columns), default=0)
    scores = np.stack([c[:n] for c in columns], axis=1) if columns else np.zeros((0, 0))
    return ScoreMatrix(label, envs, scores, sum(len(c) for c in columns))


def _estimate(data: np.ndarray | list[np.ndarray], func: Callable[..., np.ndarray], reps: int, seed: int) -> Estimate:
    with seeded_numpy(seed):
        points, intervals = library.get_interval_estimates({"x": data}, func, reps=reps, confidence_interval_size=CI_LEVEL)
    return Estimate(float(points["x"][0]), float(intervals["x"][0, 0]), float(intervals["x"][1, 0]))


def iqm(matrix: ScoreMatrix, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """Interquartile mean over all seeds × envs with a stratified bootstrap CI."""
    if matrix.scores.size == 0:
        return NAN_ESTIMATE
    return _estimate(matrix.scores, lambda s: np.array([metrics.aggregate_iqm(s)]), reps, seed)


def mean_ci(scores: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """Mean of one env's per-seed scores with a bootstrap CI (NaN CI below two seeds)."""
    scores = np.asarray(scores, dtype=float).reshape(-1, 1)
    if len(scores) == 0:
        return NAN_ESTIMATE
    if len(scores) < 2:
        return Estimate(float(scores[0, 0]), float("nan"), float("nan"))
    return _estimate(scores, lambda s: np.array([metrics.aggregate_mean(s)]), reps, seed)


def probability_of_improvement(x: ScoreMatrix, y: ScoreMatrix, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """P(X > Y) averaged over envs (Mann–Whitney per env), with an independent stratified bootstrap CI.

    ``x`` and ``y`` must cover the same envs in the same order; their seed counts may differ.
    """
    if x.envs != y.envs:
        raise ValueError(f"envs differ: {x.envs} vs {y.envs}")
    if x.scores.size == 0 or y.scores.size == 0:
        return NAN_ESTIMATE
    return _estimate([x.scores, y.scores], lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps, seed)


def matched_label(method: str, sparsity: float, labels: Sequence[str]) -> str | None:
    """The width-matched dense label at the same sparsity, if it exists and differs from the method."""
    label = run_label(MATCHED_METHOD, sparsity)
    return label if method != MATCHED_METHOD and label in labels else None


def improvement_over_matched(
    frame: pd.DataFrame, label: str, matched: str, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> tuple[Estimate, int]:
    """Probability that ``label`` beats ``matched`` (one agent's frame) over their common envs, and how many."""
    envs = sorted(set(frame.loc[frame["label"] == label, "env"]) & set(frame.loc[frame["label"] == matched, "env"]))
    if not envs:
        return NAN_ESTIMATE, 0
    x, y = score_matrix(frame, label, envs), score_matrix(frame, matched, envs)
    return probability_of_improvement(x, y, reps, seed), len(envs)


def profile_thresholds(frame: pd.DataFrame, points: int = PROFILE_POINTS) -> np.ndarray:
    """Evenly spaced thresholds τ spanning the scores in ``frame``."""
    if frame.empty:
        return np.zeros(0)
    return np.linspace(frame["score"].min(), frame["score"].max(), points)


def performance_profiles(
    matrices: dict[str, ScoreMatrix], taus: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score-distribution profiles P(score > τ) per label with (2, len(taus)) CI bands."""
    out = {}
    for label, matrix in matrices.items():
        if matrix.scores.size == 0:
            continue
        with seeded_numpy(seed):
            profile, cis = library.create_performance_profile(
                {label: matrix.scores}, taus, reps=reps, confidence_interval_size=CI_LEVEL
            )
        out[label] = (np.asarray(profile[label]), np.asarray(cis[label]))
    return out
