"""Training-diagnostics curves (``diagnostics/<group>/<metric>`` columns of ``progress.csv``, design decision 28):
per agent/env, a grid of (group, metric) panels, three to a row, a line per method-at-sparsity label: mean over seeds
against the gradient step of the measurement, with the learning curves' bootstrap band; one legend for the figure.
When every run measured once (a smoke budget), each panel shows the labels side by side instead: every seed's value
as a dot and the mean over seeds with its band as an error bar (a one-point curve would say nothing)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.aggregate import BOOTSTRAP_REPS
from analysis.curves import BAND_DESCRIPTION, mean_curves
from analysis.frame import method_rank
from analysis.plots import SEED_ALPHA, _panels, draw_mean_with_band, method_color, method_linestyle, slug
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
    """A panel per (group, metric), three to a row: per label, the mean over seeds at each measured gradient step
    and its band; with one measurement per run, the labels side by side (see the module docstring)."""
    panels = sorted(data[["group", "metric"]].drop_duplicates().itertuples(index=False))
    labels = data[["label", "method"]].drop_duplicates()
    labels = sorted(labels.itertuples(index=False), key=lambda r: (method_rank(r.method), r.label))
    once = bool((data.groupby(["label", "seed"])["step"].nunique() == 1).all())
    fig, axes = _panels(len(panels))
    for ax, (group, metric) in zip(axes, panels):
        cell = data[(data["metric"] == metric) & (data["group"] == group)].rename(columns={"value": "return"})
        stats = mean_curves(cell, reps, seed)
        for x, row in enumerate(labels):
            c = stats[stats["label"] == row.label]
            if c.empty:
                continue
            color, style = method_color(row.method), method_linestyle(row.method)
            if once:
                values = cell.loc[cell["label"] == row.label, "return"]
                ax.scatter(np.full(len(values), x), values, s=12, color=color, alpha=SEED_ALPHA, linewidths=0)
                draw_mean_with_band(ax, c.assign(step=x), color, row.label, linestyle=style, markersize=5)
            else:
                draw_mean_with_band(ax, c, color, row.label, linestyle=style, markersize=3)
        if once:
            ax.set_xticks(range(len(labels)), [r.label for r in labels], rotation=30, ha="right", fontsize="small")
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set(title=f"{group}: {metric}", ylabel=metric)
        else:
            ax.set(title=f"{group}: {metric}", xlabel="gradient steps", ylabel=metric)
    handles, names = axes[0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=min(len(unique), 4), fontsize="small")
    steps = sorted(int(step) for step in data["step"].unique())
    at = f"gradient step {steps[0]}" if len(steps) == 1 else f"gradient steps {steps[0]}-{steps[-1]}"
    when = (
        f"one measurement per run ({at}):\ndots = seeds, error bar = {BAND_DESCRIPTION}"
        if once
        else f"mean over seeds, band = {BAND_DESCRIPTION}"
    )
    fig.suptitle(f"{title}: training diagnostics, {when}", fontsize="medium")
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
