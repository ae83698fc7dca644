"""Training-diagnostics curves (``diagnostics/<group>/<metric>`` columns of ``progress.csv``, design decision 28):
per agent/env, a grid of metric × group, a line per method-at-sparsity label: mean over seeds against the gradient
step of the measurement, with the learning curves' bootstrap band."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import BOOTSTRAP_REPS
from analysis.curves import BAND_DESCRIPTION, mean_curves
from analysis.frame import method_rank
from analysis.plots import PANEL_SIZE, draw_mean_with_band, method_color, slug
from analysis.records import RunRecord
from analysis.savefig import atomic_savefig
from experiment.layout import PROGRESS_FILE

PREFIX = "diagnostics/"
STEP_COLUMN = "diagnostics/gradient_step"  # agents/diagnostics_callback.py STEP_KEY
COLUMNS = ["agent", "env", "method", "sparsity", "label", "seed", "step", "group", "metric", "value"]


def _read(run: RunRecord) -> pd.DataFrame | None:
    """The run's diagnostics in long form, or ``None`` (no progress.csv, unreadable, or no diagnostics)."""
    try:
        progress = pd.read_csv(run.path / PROGRESS_FILE)
    except (OSError, ValueError):
        return None
    metrics = [c for c in progress.columns if c.startswith(PREFIX) and c != STEP_COLUMN and c.count("/") == 2]
    if STEP_COLUMN not in progress.columns or not metrics:
        return None
    long = progress[[STEP_COLUMN, *metrics]].melt(id_vars=STEP_COLUMN, var_name="key", value_name="value")
    long = long.dropna().rename(columns={STEP_COLUMN: "step"})
    parts = long["key"].str.split("/", expand=True)
    long = long.assign(group=parts[1], metric=parts[2], **run.identity()).drop(columns="key")
    return long[COLUMNS]


def diagnostics_frame(runs: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per (usable run, measurement, group, metric); empty when no run logged diagnostics."""
    parts = [frame for run in runs if run.usable_for_curves and (frame := _read(run)) is not None]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def diagnostics_figure(data: pd.DataFrame, title: str, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Figure:
    """A panel per (metric, group): per label, the mean over seeds at each measured gradient step and its band."""
    metrics = sorted(data["metric"].unique())
    groups = sorted(data["group"].unique())
    labels = data[["label", "method"]].drop_duplicates()
    labels = sorted(labels.itertuples(index=False), key=lambda r: (method_rank(r.method), r.label))
    fig = Figure(figsize=(PANEL_SIZE[0] * len(groups), PANEL_SIZE[1] * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(groups), squeeze=False)
    for i, metric in enumerate(metrics):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            cell = data[(data["metric"] == metric) & (data["group"] == group)].rename(columns={"value": "return"})
            stats = mean_curves(cell, reps, seed)
            for row in labels:
                c = stats[stats["label"] == row.label]
                if c.empty:
                    continue
                draw_mean_with_band(ax, c, method_color(row.method), row.label, markersize=3)
            ax.set(title=f"{group}: {metric}", xlabel="gradient steps", ylabel=metric)
            ax.legend(fontsize="x-small")
    fig.suptitle(f"{title}: training diagnostics, mean over seeds, band = {BAND_DESCRIPTION}", fontsize="medium")
    return fig


def plot_diagnostics(
    frame: pd.DataFrame, out_dir: str | os.PathLike[str], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> list[Path]:
    """Per agent/env with diagnostics, :func:`diagnostics_figure` saved as ``diagnostics_<agent>_<env>``; nothing
    (no file, no message) when no run logged diagnostics."""
    written = []
    for (agent, env), data in frame.groupby(["agent", "env"], sort=True):
        fig = diagnostics_figure(data, f"{agent} / {env}", reps, seed)
        written += atomic_savefig(fig, Path(out_dir) / f"diagnostics_{slug(agent)}_{slug(env)}")
    return written
