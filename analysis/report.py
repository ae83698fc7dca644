"""The whole analysis of a runs directory: load, score, normalise, aggregate, write tables and plots."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import aggregate as agg
from analysis import plots
from analysis.curves import curve_frame
from analysis.diagnostics_plots import diagnostics_frame, plot_diagnostics
from analysis.frame import ordered_labels, scores_frame
from analysis.loading import PROGRESS_MIN_RUNS, load_runs
from analysis.normalize import REFERENCE_METHOD, normalize
from analysis.records import RunRecord
from analysis.tables import aggregate_table, markdown_table, per_env_table, runs_table
from experiment.layout import LAST_FRACTION, atomic_write, atomic_write_text

DEFAULT_OUT = "analysis"  # under the runs directory


class NoUsableRunsError(RuntimeError):
    """No run under the root has even one readable evaluation."""


@dataclass
class AnalysisResult:
    """Everything the analysis computed and the files it wrote."""

    root: Path
    out: Path
    normalization: str
    runs: list[RunRecord]
    scores: pd.DataFrame
    per_env: pd.DataFrame
    aggregate: pd.DataFrame
    files: list[Path] = field(default_factory=list)

    @property
    def poi_note(self) -> str | None:
        """Why ``poi_vs_matched`` is empty where it is: no ``dense_matched`` run at that sparsity (``None`` if
        every sparse label has its comparison)."""
        compared = ~self.aggregate["method"].isin([REFERENCE_METHOD, agg.MATCHED_METHOD])
        missing = self.aggregate[compared & self.aggregate["poi_vs_matched"].isna()]
        if missing.empty:
            return None
        labels = ", ".join(f"{a}/{lab}" for a, lab in zip(missing["agent"], missing["label"]))
        levels = ",".join(f"{s:g}" for s in sorted(missing["sparsity"].unique()))
        return (
            f"poi_vs_matched is empty for {labels}: no completed {agg.MATCHED_METHOD} run at the same sparsity to compare "
            f"with (train one: sparsity={agg.MATCHED_METHOD} sparsity.sparsity={levels}); {REFERENCE_METHOD} and "
            f"{agg.MATCHED_METHOD} themselves have none"
        )

    @property
    def problem_runs(self) -> pd.DataFrame:
        """Runs excluded from scores (or from everything), with the reasons."""
        table = runs_table(self.runs, str(self.root))
        return table[table["usable"] != "scores+curves"][["path", "usable", "status", "issues"]]


def score_unit(normalization: str) -> str:
    """Axis/table unit of the scores."""
    return "return" if normalization == "raw" else f"score ÷ {REFERENCE_METHOD} mean (1 = {REFERENCE_METHOD})"


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def results_markdown(result: AnalysisResult, reps: int, seed: int) -> str:
    """The ``results.md`` report: settings, aggregate and per-env tables, runs with issues."""
    lines = [
        f"# Results for `{result.root}`",
        "",
        f"- Per-run score: mean of the last {LAST_FRACTION:.0%} of evaluations (eval episodes averaged first).",
        f"- Units: {score_unit(result.normalization)} (normalisation `{result.normalization}`).",
        f"- Aggregation: rliable IQM over envs × seeds; seeds are the run axis; {agg.CI_LEVEL:.0%} stratified "
        f"bootstrap CIs, {reps} replications, numpy seed {seed}. With unequal seed counts across envs a label "
        "keeps its lowest `n_seeds` seeds per env (`n_runs` counts all).",
        f"- `poi_vs_matched`: probability of improvement over `{agg.MATCHED_METHOD}` at the same sparsity "
        "(over their common envs).",
    ]
    if result.normalization == "raw" and (result.scores.groupby("agent")["env"].nunique() > 1).any():
        lines.append("- Warning: raw returns of different envs are pooled in the IQM; use `--normalize dense`.")
    if result.poi_note is not None:
        lines.append(f"- Note: {result.poi_note}.")
    lines += ["", "## Aggregate", "", markdown_table(result.aggregate), "", "## Per environment", ""]
    lines += [markdown_table(result.per_env), "", "## Runs excluded from scores", ""]
    problems = result.problem_runs
    lines.append(markdown_table(problems) if not problems.empty else "None.")
    return "\n".join(lines) + "\n"


def _plot(result: AnalysisResult, reps: int, seed: int) -> list[Path]:
    out, unit = result.out, score_unit(result.normalization)
    written = plots.plot_learning_curves(curve_frame(result.runs), out, reps, seed)
    written += plot_diagnostics(diagnostics_frame(result.runs), out, reps, seed)
    if result.scores.empty:
        return written
    written += plots.plot_score_vs_params(result.per_env, out, unit, result.scores)
    written += plots.plot_iqm_bars(result.aggregate, out, unit)
    for agent, frame in result.scores.groupby("agent", sort=True):
        matrices = {label: agg.score_matrix(frame, label) for label in ordered_labels(frame)}
        taus = agg.profile_thresholds(frame)
        profiles = agg.performance_profiles(matrices, taus, reps, seed)
        labels = frame[["label", "method", "sparsity"]].drop_duplicates()
        stem = out / f"profile_{plots.slug(agent)}"
        runs = {label: int(matrix.scores.size) for label, matrix in matrices.items()}  # the runs profiled
        title = f"{agent}: performance profiles"
        written += plots.plot_performance_profiles(profiles, taus, labels, stem, unit, title, runs)
    return written


def analyze(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    normalization: str = "raw",
    reps: int = agg.BOOTSTRAP_REPS,
    seed: int = 0,
    progress: bool | None = None,
    make_plots: bool = True,
) -> AnalysisResult:
    """Analyse every run under ``root``; write tables (and plots) to ``out`` (default ``root/analysis``).

    Broken and incomplete runs are reported on the result, not raised. Raises :class:`NoUsableRunsError`
    if no run has a readable evaluation, and ``NormalizationError`` if ``dense`` normalisation is impossible.
    """
    root = Path(root)
    out = root / DEFAULT_OUT if out is None else Path(out)
    if not root.is_dir():
        raise NoUsableRunsError(f"{root} is not a directory")
    runs = load_runs(root, skip=(out,), progress=progress)
    if not any(run.usable_for_curves for run in runs):
        raise NoUsableRunsError(f"no usable run under {root} ({len(runs)} run directories found)")
    scores = normalize(scores_frame(runs), normalization)
    show = len(scores) >= PROGRESS_MIN_RUNS if progress is None else progress
    result = AnalysisResult(
        root, out, normalization, runs, scores, per_env_table(scores, reps, seed), aggregate_table(scores, reps, seed, show)
    )
    result.files += [
        _write_csv(result.per_env, out / "per_env.csv"),
        _write_csv(result.aggregate, out / "aggregate.csv"),
        _write_csv(runs_table(runs, str(root)), out / "runs.csv"),
        atomic_write_text(out / "results.md", results_markdown(result, reps, seed)),
    ]
    if make_plots:
        result.files += _plot(result, reps, seed)
    return result
