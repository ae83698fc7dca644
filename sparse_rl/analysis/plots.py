"""Figures (matplotlib's object API, rendered by Agg; each saved as PNG and PDF).

- learning curves per agent/env, one panel per sparsity, the standard dense network in every panel;
- score vs active parameters (log x) per env, one line per method across sparsities (paper's figures);
- IQM bars with CIs per sparsity and method; performance profiles per sparsity.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from sparse_rl.analysis.aggregate import CI_LEVEL
from sparse_rl.analysis.atomic import atomic_savefig
from sparse_rl.analysis.curves import mean_curves
from sparse_rl.analysis.frame import METHOD_ORDER, method_rank
from sparse_rl.analysis.normalize import REFERENCE_METHOD, REFERENCE_SPARSITY
from sparse_rl.analysis.records import run_label

REFERENCE_LABEL = run_label(REFERENCE_METHOD, REFERENCE_SPARSITY)
PANEL_COLUMNS = 3
PANEL_SIZE = (4.5, 3.4)  # inches per panel
BAND_ALPHA = 0.2


def slug(name: str) -> str:
    """A file-name-safe version of ``name`` (env names may contain '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def method_color(method: str) -> str:
    """A stable colour per method (tab10, in paper order)."""
    return (
        f"C{METHOD_ORDER.index(method)}"
        if method in METHOD_ORDER
        else f"C{len(METHOD_ORDER) + zlib.crc32(method.encode()) % 4}"
    )


def _ci_text() -> str:
    return f"{CI_LEVEL:.0%} CI"


def _panels(n: int) -> tuple[Figure, list[Axes]]:
    ncols = max(1, min(n, PANEL_COLUMNS))
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _sparsity_panels(labels: pd.DataFrame) -> list[float]:
    """Sparsities to give a panel: all but the reference's 0, unless something else lives at 0."""
    levels = sorted(labels["sparsity"].unique())
    others = labels[labels["label"] != REFERENCE_LABEL]
    return [s for s in levels if s != REFERENCE_SPARSITY or (others["sparsity"] == s).any()] or levels


def _reference_line(ax: Axes, value: float, low: float, high: float) -> None:
    ax.axhline(value, color="black", linestyle="--", linewidth=1, label=f"{REFERENCE_LABEL} (standard)")
    if np.isfinite(low) and np.isfinite(high):
        ax.axhspan(low, high, color="black", alpha=BAND_ALPHA / 2, linewidth=0)


def plot_learning_curves(curves: pd.DataFrame, out_dir: str | os.PathLike[str]) -> list[Path]:
    """One figure per agent/env: mean return over seeds vs env steps with CI bands, a panel per sparsity."""
    written = []
    for (agent, env), data in curves.groupby(["agent", "env"], sort=True):
        labels = data[["label", "method", "sparsity"]].drop_duplicates()
        stats = mean_curves(data)
        levels = _sparsity_panels(labels)
        fig, axes = _panels(len(levels))
        for ax, level in zip(axes, levels):
            chosen = labels[(labels["sparsity"] == level) | (labels["label"] == REFERENCE_LABEL)]
            for row in sorted(chosen.itertuples(index=False), key=lambda r: method_rank(r.method)):
                c = stats[stats["label"] == row.label]
                ref = row.label == REFERENCE_LABEL and level != REFERENCE_SPARSITY
                color = "black" if ref else method_color(row.method)
                ax.plot(c["step"], c["mean"], color=color, linestyle="--" if ref else "-", label=row.label)
                ax.fill_between(c["step"], c["low"], c["high"], color=color, alpha=BAND_ALPHA, linewidth=0)
            ax.set(title=f"sparsity {level:g}", xlabel="env steps", ylabel="return")
            ax.legend(fontsize="small")
        fig.suptitle(f"{agent} / {env}: mean over seeds, {_ci_text()} band")
        written += atomic_savefig(fig, Path(out_dir) / f"curves_{slug(agent)}_{slug(env)}")
    return written


def plot_score_vs_params(per_env: pd.DataFrame, out_dir: str | os.PathLike[str], unit: str) -> list[Path]:
    """Per agent, a panel per env: mean score vs mean active parameters (log x), a line per method."""
    written = []
    for agent, data in per_env.groupby("agent", sort=True):
        envs = sorted(data["env"].unique())
        fig, axes = _panels(len(envs))
        for ax, env in zip(axes, envs):
            cell = data[data["env"] == env]
            ref = cell[cell["label"] == REFERENCE_LABEL]
            if not ref.empty:
                _reference_line(ax, *ref[["mean", "ci_low", "ci_high"]].iloc[0].to_numpy(dtype=float))
                ax.plot(ref["active_params"], ref["mean"], marker="*", markersize=10, color="black", linestyle="none")
            points = cell[(cell["label"] != REFERENCE_LABEL) & cell["active_params"].notna()]
            for method in sorted(points["method"].unique(), key=method_rank):
                p = points[points["method"] == method].sort_values("active_params")
                yerr = np.nan_to_num(np.abs(p[["ci_low", "ci_high"]].to_numpy(dtype=float).T - p["mean"].to_numpy()))
                ax.errorbar(
                    p["active_params"], p["mean"], yerr=yerr, marker="o", capsize=3, color=method_color(method), label=method
                )
                for x, y, s in zip(p["active_params"], p["mean"], p["sparsity"]):
                    ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
            if not points.empty:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(title=env, xlabel="active parameters (kernels + biases)", ylabel=unit)
            ax.legend(fontsize="small")
        fig.suptitle(f"{agent}: final score vs active parameters (mean over seeds, {_ci_text()})")
        written += atomic_savefig(fig, Path(out_dir) / f"params_{slug(agent)}")
    return written


def plot_iqm_bars(aggregate: pd.DataFrame, out_dir: str | os.PathLike[str], unit: str) -> list[Path]:
    """Per agent: IQM over envs × seeds per sparsity (groups) and method (bars) with CI error bars."""
    written = []
    for agent, data in aggregate.groupby("agent", sort=True):
        fig = Figure(figsize=(8, 4), layout="constrained")
        ax = fig.subplots()
        ref = data[data["label"] == REFERENCE_LABEL]
        if not ref.empty:
            _reference_line(ax, *ref[["iqm", "ci_low", "ci_high"]].iloc[0].to_numpy(dtype=float))
        bars = data[data["label"] != REFERENCE_LABEL] if len(data) > len(ref) else data
        levels = sorted(bars["sparsity"].unique())
        methods = sorted(bars["method"].unique(), key=method_rank)
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            rows = bars[bars["method"] == method].set_index("sparsity").reindex(levels)
            yerr = np.nan_to_num(np.abs(rows[["ci_low", "ci_high"]].to_numpy(dtype=float).T - rows["iqm"].to_numpy()))
            x = np.arange(len(levels)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(x, rows["iqm"], width, yerr=yerr, capsize=3, color=method_color(method), label=method)
        ax.set_xticks(np.arange(len(levels)), [f"{s:g}" for s in levels])
        ax.set(xlabel="sparsity", ylabel=f"IQM ({unit})", title=f"{agent}: IQM over envs and seeds, {_ci_text()}")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        written += atomic_savefig(fig, Path(out_dir) / f"iqm_{slug(agent)}")
    return written


def plot_performance_profiles(
    profiles: dict[str, tuple[np.ndarray, np.ndarray]],
    taus: np.ndarray,
    labels: pd.DataFrame,
    out_stem: str | os.PathLike[str],
    unit: str,
    title: str = "performance profiles",
) -> list[Path]:
    """Score distributions P(score > τ) with CI bands, a panel per sparsity, the reference in each panel."""
    labels = labels[labels["label"].isin(profiles)]
    levels = _sparsity_panels(labels)
    fig, axes = _panels(len(levels))
    for ax, level in zip(axes, levels):
        chosen = labels[(labels["sparsity"] == level) | (labels["label"] == REFERENCE_LABEL)]
        for row in sorted(chosen.itertuples(index=False), key=lambda r: method_rank(r.method)):
            profile, cis = profiles[row.label]
            ref = row.label == REFERENCE_LABEL and level != REFERENCE_SPARSITY
            color = "black" if ref else method_color(row.method)
            ax.plot(taus, profile, color=color, linestyle="--" if ref else "-", label=row.label)
            ax.fill_between(taus, cis[0], cis[1], color=color, alpha=BAND_ALPHA, linewidth=0)
        ax.set(title=f"sparsity {level:g}", xlabel=f"score τ ({unit})", ylabel="fraction of runs > τ", ylim=(0, 1.02))
        ax.legend(fontsize="small")
    fig.suptitle(f"{title}, {_ci_text()}")
    return atomic_savefig(fig, out_stem)
