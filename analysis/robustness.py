"""Tables and the figure of ``python -m sparse_rl.evaluate``: return vs observation-noise sigma (paper Fig 6).

Per run and sigma the score is the mean return over its evaluation episodes; per agent, env, method, sparsity
and sigma the table gives the mean over seeds with a percentile bootstrap CI (:func:`~analysis.
aggregate.mean_ci`, as the analysis' per-env table).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import aggregate as agg
from analysis.frame import method_rank
from analysis.plots import BAND_ALPHA, _figure_legend, _fit_limits, _panels, method_color, method_linestyle
from analysis.savefig import atomic_savefig

RETURN_COLUMNS = ["path", "agent", "env", "method", "sparsity", "seed", "sigma", "episode", "return"]
TABLE_COLUMNS = ["agent", "env", "method", "sparsity", "sigma", "n_seeds", "mean", "ci_low", "ci_high"]
IDENTITY = ["agent", "env", "method", "sparsity"]
LINESTYLES = ("-", "--", ":", "-.")  # one per sparsity within a method
FIGURE = "robustness"
SIGMA_UNITS = "sigma: pixel units for pixel observations, each dimension's std for vector observations"


def robustness_table(returns: pd.DataFrame, reps: int = agg.BOOTSTRAP_REPS, seed: int = 0) -> pd.DataFrame:
    """One row per agent, env, method, sparsity and sigma: seeds, mean of the per-run mean returns, CI."""
    per_run = returns.groupby([*IDENTITY, "sigma", "seed"], sort=False)["return"].mean().reset_index()
    rows = []
    for key, cell in per_run.groupby([*IDENTITY, "sigma"], sort=False):
        est = agg.mean_ci(cell.sort_values("seed")["return"].to_numpy(), reps, seed)
        rows.append({**dict(zip([*IDENTITY, "sigma"], key)), "n_seeds": len(cell), "mean": est.value,
                     "ci_low": est.low, "ci_high": est.high})  # fmt: skip
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    order = table["method"].map(method_rank)
    return (
        table.assign(_rank=order)
        .sort_values(["agent", "env", "_rank", "method", "sparsity", "sigma"])
        .drop(columns="_rank")
        .reset_index(drop=True)
    )


def robustness_figure(table: pd.DataFrame, title: str) -> Figure:
    """A panel per agent/env: mean return vs sigma (a tick per sigma, symmetric log scale), a line per method and
    sparsity, its CI as a band; the dense reference black and dashed as in the analysis' figures; one legend below."""
    panels = table[["agent", "env"]].drop_duplicates().sort_values(["agent", "env"]).itertuples(index=False)
    panels = list(panels)
    fig, axes = _panels(len(panels))
    for ax, (agent, env) in zip(axes, panels):
        cell = table[(table["agent"] == agent) & (table["env"] == env)]
        for method in sorted(cell["method"].unique(), key=method_rank):
            by_method = cell[cell["method"] == method]
            for i, sparsity in enumerate(sorted(by_method["sparsity"].unique())):
                line = by_method[by_method["sparsity"] == sparsity].sort_values("sigma")
                color = method_color(method)
                n = int(line["n_seeds"].min())
                style = method_linestyle(method, LINESTYLES[i % len(LINESTYLES)])  # dense: as in analyze's figures
                ax.plot(line["sigma"], line["mean"], color=color, linestyle=style, marker="o", markersize=3,
                        label=f"{method} s={sparsity:g} (n={n})")  # fmt: skip
                ax.fill_between(line["sigma"], line["ci_low"], line["ci_high"], color=color, alpha=BAND_ALPHA, linewidth=0)
        _fit_limits(ax, pd.concat([cell["mean"], cell["ci_low"], cell["ci_high"]]))
        sigmas = sorted(cell["sigma"].unique())
        nonzero = [v for v in sigmas if v > 0]
        if nonzero:  # sigma grids are roughly geometric (0.1, 0.2, 0.5, ...): log spacing, 0 on its linear stretch
            ax.set_xscale("symlog", linthresh=nonzero[0], linscale=0.5)
            ax.set_xlim(-0.3 * nonzero[0], nonzero[-1] * 1.15)
        ax.set_xticks(sigmas, [f"{v:g}" for v in sigmas])
        ax.set(title=f"{agent} / {env}", xlabel="noise sigma (symmetric log scale)", ylabel="return")
    _figure_legend(fig, axes)
    fig.suptitle(f"{title}: mean over seeds, {agg.CI_LEVEL:.0%} bootstrap CI\n{SIGMA_UNITS}", fontsize="medium")
    return fig


def plot_robustness(table: pd.DataFrame, out_dir: str | os.PathLike[str]) -> list[Path]:
    """:func:`robustness_figure` saved as ``robustness.png`` and ``.pdf``."""
    if table.empty or not np.isfinite(table["mean"].to_numpy(dtype=float)).any():
        return []
    return atomic_savefig(robustness_figure(table, "Return under Gaussian observation noise"), Path(out_dir) / FIGURE)
