"""Figures (matplotlib's object API, rendered by Agg; each saved as PNG and PDF).

- learning curves per agent/env, one panel per sparsity, the standard dense network in every panel: every
  seed's evaluations, their mean with markers (one evaluation is still a point) and a percentile bootstrap band;
- score vs active parameters (log x with labelled 1-2-5 ticks) per env, one line per method across sparsities
  (paper's figures), every run's score as a dot; methods at the same count are dodged sideways;
- IQM per sparsity and method as rliable-style interval estimates (point and CI, no bars from 0), the legend
  outside the axes;
- performance profiles per sparsity (CI bands only where enough runs make them informative).

Every axis is scaled to what it draws (no data outside, 0 not forced in). The standard dense network (``dense`` at
sparsity 0, the reference) is black and dashed in every figure, the robustness figure's included.
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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from analysis.aggregate import BOOTSTRAP_REPS, CI_LEVEL
from analysis.curves import BAND_DESCRIPTION, mean_curves
from analysis.frame import METHOD_ORDER, method_rank
from analysis.normalize import REFERENCE_METHOD, REFERENCE_SPARSITY
from analysis.records import run_label
from analysis.savefig import atomic_savefig

REFERENCE_LABEL = run_label(REFERENCE_METHOD, REFERENCE_SPARSITY)
REFERENCE_COLOR, REFERENCE_LINESTYLE = "black", "--"
REFERENCE_NAME = f"{REFERENCE_LABEL}: the standard dense network"  # legends say what the dashed reference is
DODGE_DECADES = 0.012  # score vs parameters: methods at the same count are this far apart on the log axis (~3%)
COUNT_TICKS = (1.0, 2.0, 5.0)  # labelled ticks per decade of a parameter-count axis
PANEL_COLUMNS = 3
PANEL_SIZE = (4.5, 3.4)  # inches per panel
BAND_ALPHA = 0.2
SEED_ALPHA = 0.35  # single seeds and runs, drawn under their mean
LIMIT_MARGIN = 0.06  # axis limits: the data's range plus this fraction on each side


def slug(name: str) -> str:
    """A file-name-safe version of ``name`` (env names may contain '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "x"


def method_color(method: str) -> str:
    """A stable colour per method (tab10, in paper order); the reference method (``dense``) is black."""
    if method == REFERENCE_METHOD:
        return REFERENCE_COLOR
    return (
        f"C{METHOD_ORDER.index(method)}"
        if method in METHOD_ORDER
        else f"C{len(METHOD_ORDER) + zlib.crc32(method.encode()) % 4}"
    )


def method_linestyle(method: str, default: str = "-") -> str:
    """Dashed for the reference method (``dense``), else ``default``."""
    return REFERENCE_LINESTYLE if method == REFERENCE_METHOD else default


def count_label(value: float, _position: object = None) -> str:
    """A parameter count as a tick label: ``500``, ``20k``, ``1.5M``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def set_count_axis(ax: Axes, axis: str = "x") -> None:
    """A log axis of parameter counts with labelled 1-2-5 ticks (several per decade, readable within one decade)."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=COUNT_TICKS, numticks=30))
    target.set_major_formatter(FuncFormatter(count_label))
    target.set_minor_formatter(NullFormatter())


def dodge_factors(n: int) -> np.ndarray:
    """Multipliers that spread ``n`` series at the same x symmetrically on a log axis (:data:`DODGE_DECADES` apart)."""
    return 10.0 ** ((np.arange(n) - (n - 1) / 2) * DODGE_DECADES)


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


def _fit_limits(ax: Axes, values: object, axis: str = "y") -> None:
    """Scale ``axis`` to the finite ``values`` plotted (every point inside, a small margin, 0 not forced in)."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return
    low, high = float(v.min()), float(v.max())
    pad = (high - low) * LIMIT_MARGIN if high > low else max(abs(high) * LIMIT_MARGIN, 1.0)
    (ax.set_ylim if axis == "y" else ax.set_xlim)(low - pad, high + pad)


def _figure_legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend for all panels, below them (inside a panel it covers data)."""
    entries: dict[str, object] = {}
    for ax in axes:
        handles, names = ax.get_legend_handles_labels()
        entries.update((n, h) for n, h in zip(names, handles) if n not in entries)
    if entries:
        fig.legend(entries.values(), entries.keys(), loc="outside lower center", ncols=min(len(entries), 3), fontsize="small")


def _reference_line(ax: Axes, value: float, low: float, high: float, what: str, vertical: bool = False) -> None:
    """The reference's ``what`` (e.g. ``IQM``) as a dashed line across the axes, its CI as a grey band."""
    line, span = (ax.axvline, ax.axvspan) if vertical else (ax.axhline, ax.axhspan)
    label = f"{REFERENCE_NAME} ({what}; band: {_ci_text()})"
    line(value, color=REFERENCE_COLOR, linestyle=REFERENCE_LINESTYLE, linewidth=1, label=label)
    if np.isfinite(low) and np.isfinite(high):
        span(low, high, color=REFERENCE_COLOR, alpha=BAND_ALPHA / 2, linewidth=0)


def draw_mean_with_band(
    ax: Axes, curve: pd.DataFrame, color: str | tuple, label: str, linestyle: str = "-", markersize: float = 4
) -> None:
    """A mean curve (``step``, ``mean``) with markers and its ``low``-``high`` band; one point gets an error bar
    (a band over one step has no width)."""
    ax.plot(curve["step"], curve["mean"], color=color, linestyle=linestyle, marker="o", markersize=markersize, label=label)
    ax.fill_between(curve["step"], curve["low"], curve["high"], color=color, alpha=BAND_ALPHA, linewidth=0)
    if len(curve) == 1:
        yerr = np.nan_to_num(np.abs(curve[["low", "high"]].to_numpy(dtype=float).T - curve["mean"].to_numpy()))
        ax.errorbar(curve["step"], curve["mean"], yerr=yerr, color=color, capsize=4, linestyle="none")


def learning_curve_figure(data: pd.DataFrame, title: str, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Figure:
    """One agent/env's curves, a panel per sparsity: every seed's evaluations (thin), their mean (markers) and a
    bootstrap band (:data:`~analysis.curves.BAND_DESCRIPTION`); y scaled to what is drawn."""
    labels = data[["label", "method", "sparsity"]].drop_duplicates()
    stats = mean_curves(data, reps, seed)
    levels = _sparsity_panels(labels)
    fig, axes = _panels(len(levels))
    for ax, level in zip(axes, levels):
        chosen = labels[(labels["sparsity"] == level) | (labels["label"] == REFERENCE_LABEL)]
        drawn = []
        for row in sorted(chosen.itertuples(index=False), key=lambda r: method_rank(r.method)):
            c = stats[stats["label"] == row.label]
            color = method_color(row.method)
            for _, run in data[data["label"] == row.label].groupby("seed"):
                ax.plot(run["step"], run["return"], color=color, alpha=SEED_ALPHA, linewidth=0.8, marker="o", markersize=2.5)
            draw_mean_with_band(ax, c, color, f"{row.label} (n={int(c['count'].max())})", method_linestyle(row.method))
            drawn += [data.loc[data["label"] == row.label, "return"], c["low"], c["high"]]
        _fit_limits(ax, pd.concat(drawn))
        ax.set(title=f"sparsity {level:g}", xlabel="env steps", ylabel="return")
    _figure_legend(fig, axes)
    fig.suptitle(f"{title}: thin = seeds, markers = mean over seeds,\nband = {BAND_DESCRIPTION}", fontsize="medium")
    return fig


def plot_learning_curves(
    curves: pd.DataFrame, out_dir: str | os.PathLike[str], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> list[Path]:
    """One figure per agent/env (:func:`learning_curve_figure`), saved as ``curves_<agent>_<env>``."""
    written = []
    for (agent, env), data in curves.groupby(["agent", "env"], sort=True):
        fig = learning_curve_figure(data, f"{agent} / {env}", reps, seed)
        written += atomic_savefig(fig, Path(out_dir) / f"curves_{slug(agent)}_{slug(env)}")
    return written


def score_params_figure(per_env: pd.DataFrame, scores: pd.DataFrame | None, agent: str, unit: str) -> Figure:
    """A panel per env: mean score vs mean active parameters (log x, labelled 1-2-5 ticks), a line per method with
    bootstrap CIs, and every run's score as a dot; methods at the same count are dodged sideways
    (:func:`dodge_factors`) so none hides another; the standard dense network as a dashed line, band and star; y
    scaled to what is drawn."""
    envs = sorted(per_env["env"].unique())
    fig, axes = _panels(len(envs))
    for ax, env in zip(axes, envs):
        cell = per_env[per_env["env"] == env]
        runs = scores[scores["env"] == env] if scores is not None else None
        drawn = [cell["mean"], cell["ci_low"], cell["ci_high"]]
        ref = cell[cell["label"] == REFERENCE_LABEL]
        if not ref.empty:
            _reference_line(ax, *ref[["mean", "ci_low", "ci_high"]].iloc[0].to_numpy(dtype=float), what="mean")
            ax.plot(ref["active_params"], ref["mean"], marker="*", markersize=10, color=REFERENCE_COLOR, linestyle="none")
        points = cell[cell["active_params"].notna() & (cell["label"] != REFERENCE_LABEL)]
        methods = sorted(points["method"].unique(), key=method_rank)
        dodge = dict(zip(methods, dodge_factors(len(methods))))
        if runs is not None and not runs.empty:
            dots = runs[runs["active_params"].notna()]
            pairs = zip(dots["method"], dots["label"])
            shift = np.array([1.0 if label == REFERENCE_LABEL else dodge.get(m, 1.0) for m, label in pairs])
            colors = [method_color(m) for m in dots["method"]]
            ax.scatter(dots["active_params"] * shift, dots["score"], s=12, c=colors, alpha=SEED_ALPHA, linewidths=0, zorder=1)
            drawn.append(runs["score"])
        for method in methods:
            p = points[points["method"] == method].sort_values("active_params")
            yerr = np.nan_to_num(np.abs(p[["ci_low", "ci_high"]].to_numpy(dtype=float).T - p["mean"].to_numpy()))
            x = p["active_params"].to_numpy(dtype=float) * dodge[method]
            ax.errorbar(x, p["mean"], yerr=yerr, marker="o", capsize=3, color=method_color(method), label=method)
            for xi, y, s in zip(x, p["mean"], p["sparsity"]):
                ax.annotate(f"{s:g}", (xi, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        if not cell["active_params"].dropna().empty:
            set_count_axis(ax)
            counts = cell["active_params"].dropna().to_numpy(dtype=float)
            spread = dodge_factors(max(len(methods), 1))
            ax.set_xlim(*_decade_padded(counts.min() * spread[0], counts.max() * spread[-1]))
        _fit_limits(ax, pd.concat(drawn))
        ax.set(title=env, xlabel="active parameters (kernels + biases), log scale", ylabel=unit)
    _figure_legend(fig, axes)
    dodged = " methods at equal counts drawn side by side;" if len(per_env["method"].unique()) > 2 else ""
    fig.suptitle(
        f"{agent}: final score vs active parameters\n(dots = runs; lines = mean over seeds, {_ci_text()} bootstrap;"
        f"{dodged} labels = sparsity)",
        fontsize="medium",
    )
    return fig


def _decade_padded(low: float, high: float) -> tuple[float, float]:
    """x limits on a log axis from the 1-2-5 tick at or below ``low`` to the one at or above ``high`` (a little
    beyond), so every point lies between two labelled ticks and at least two are labelled."""
    decades = range(int(np.floor(np.log10(low))) - 1, int(np.ceil(np.log10(high))) + 2)
    ticks = [t * 10.0**e for e in decades for t in COUNT_TICKS]
    below = max(t for t in ticks if t <= low)
    above = min(t for t in ticks if t >= high and t > below)
    return below / 1.08, above * 1.08


def plot_score_vs_params(
    per_env: pd.DataFrame, out_dir: str | os.PathLike[str], unit: str, scores: pd.DataFrame | None = None
) -> list[Path]:
    """Per agent, :func:`score_params_figure` saved as ``params_<agent>``."""
    written = []
    for agent, data in per_env.groupby("agent", sort=True):
        runs = scores[scores["agent"] == agent] if scores is not None else None
        written += atomic_savefig(score_params_figure(data, runs, str(agent), unit), Path(out_dir) / f"params_{slug(agent)}")
    return written


def interval_estimates_figure(aggregate: pd.DataFrame, agent: str, unit: str) -> Figure:
    """rliable-style interval estimates: a row per method at each sparsity, its IQM as a point and its stratified
    bootstrap CI as a bar around it (not a bar from 0); the standard dense network as a dashed line and band, named
    in a legend below the axes (inside it would cover a CI bar)."""
    ref = aggregate[aggregate["label"] == REFERENCE_LABEL]
    rows = aggregate[aggregate["label"] != REFERENCE_LABEL] if len(aggregate) > len(ref) else aggregate
    rows = rows.sort_values(["sparsity", "method"], key=lambda c: c.map(method_rank) if c.name == "method" else c)
    with_ref = not ref.empty and len(rows) != len(aggregate)
    fig = Figure(figsize=(7, 1.2 + 0.32 * len(rows) + (0.4 if with_ref else 0)), layout="constrained")
    ax = fig.subplots()
    if with_ref:
        _reference_line(ax, *ref[["iqm", "ci_low", "ci_high"]].iloc[0].to_numpy(dtype=float), what="IQM", vertical=True)
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows.itertuples(index=False)):
        color = method_color(row.method)
        if np.isfinite(row.ci_low) and np.isfinite(row.ci_high):
            ax.hlines(yi, row.ci_low, row.ci_high, color=color, linewidth=7, alpha=0.55)
        ax.plot(row.iqm, yi, marker="|", markersize=14, markeredgewidth=2, color="black")
        ax.plot(row.iqm, yi, marker="o", markersize=4, color=color)
    previous = rows["sparsity"].to_numpy()
    for yi, (a, b) in zip(y[1:], zip(previous[:-1], previous[1:])):
        if a != b:
            ax.axhline(yi + 0.5, color="0.8", linewidth=0.8)
    ax.set_yticks(y, [f"{m}  s={s:g}" for m, s in zip(rows["method"], rows["sparsity"])])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    _fit_limits(ax, pd.concat([rows["iqm"], rows["ci_low"], rows["ci_high"], ref["iqm"], ref["ci_low"], ref["ci_high"]]), "x")
    ax.set(xlabel=f"IQM ({unit})", title=f"{agent}: IQM over envs and seeds, {CI_LEVEL:.0%} stratified bootstrap CI")
    if with_ref:
        fig.legend(handles=ax.get_legend_handles_labels()[0], fontsize="small", loc="outside lower center", frameon=False)
    return fig


def plot_iqm_bars(aggregate: pd.DataFrame, out_dir: str | os.PathLike[str], unit: str) -> list[Path]:
    """Per agent, :func:`interval_estimates_figure` saved as ``iqm_<agent>``."""
    written = []
    for agent, data in aggregate.groupby("agent", sort=True):
        written += atomic_savefig(interval_estimates_figure(data, str(agent), unit), Path(out_dir) / f"iqm_{slug(agent)}")
    return written


def runs_for_informative_band(level: float = CI_LEVEL) -> int:
    """The fewest runs ``n`` for which a percentile-bootstrap CI of a fraction P(score > τ) never covers all of
    [0, 1]. With ``k`` of ``n`` runs above τ a resample lies wholly on one side with probability ``(k/n)^n`` or
    ``(1 - k/n)^n``; where both reach ``(1 - level) / 2`` the CI is [0, 1] (at 95%: n ≤ 4, so 5)."""
    tail = (1 - level) / 2
    n = 2
    while any((k / n) ** n >= tail and (1 - k / n) ** n >= tail for k in range(1, n)):
        n += 1
    return n


def plot_performance_profiles(
    profiles: dict[str, tuple[np.ndarray, np.ndarray]],
    taus: np.ndarray,
    labels: pd.DataFrame,
    out_stem: str | os.PathLike[str],
    unit: str,
    title: str = "performance profiles",
    runs: dict[str, int] | None = None,
) -> list[Path]:
    """:func:`performance_profiles_figure` saved as PNG and PDF at ``out_stem``."""
    return atomic_savefig(performance_profiles_figure(profiles, taus, labels, unit, title, runs), out_stem)


def performance_profiles_figure(
    profiles: dict[str, tuple[np.ndarray, np.ndarray]],
    taus: np.ndarray,
    labels: pd.DataFrame,
    unit: str,
    title: str = "performance profiles",
    runs: dict[str, int] | None = None,
) -> Figure:
    """Score distributions P(score > τ), a panel per sparsity, the reference in each panel. A label's CI band is
    drawn only with at least :func:`runs_for_informative_band` runs (``runs``: per label); with fewer it would span
    all of [0, 1] wherever the runs disagree, hiding the curves, and its legend entry says so."""
    labels = labels[labels["label"].isin(profiles)]
    levels = _sparsity_panels(labels)
    needed = runs_for_informative_band()
    fig, axes = _panels(len(levels))
    for ax, level in zip(axes, levels):
        chosen = labels[(labels["sparsity"] == level) | (labels["label"] == REFERENCE_LABEL)]
        for row in sorted(chosen.itertuples(index=False), key=lambda r: method_rank(r.method)):
            profile, cis = profiles[row.label]
            n = None if runs is None else runs.get(row.label)
            band = n is None or n >= needed
            label = row.label if n is None else f"{row.label} (n={n}{'' if band else ', no CI band'})"
            color = method_color(row.method)
            ax.plot(taus, profile, color=color, linestyle=method_linestyle(row.method), label=label)
            if band:
                ax.fill_between(taus, cis[0], cis[1], color=color, alpha=BAND_ALPHA, linewidth=0)
        ax.set(title=f"sparsity {level:g}", xlabel=f"score τ ({unit})", ylabel="fraction of runs > τ", ylim=(0, 1.02))
    _figure_legend(fig, axes)
    fig.suptitle(
        f"{title}, {_ci_text()} bands (stratified bootstrap, rliable)\nbands drawn for labels with ≥ {needed} runs: "
        f"with fewer, a {_ci_text()} of a fraction covers all of [0, 1] wherever the runs disagree",
        fontsize="medium",
    )
    return fig
