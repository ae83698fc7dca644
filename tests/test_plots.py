"""What the analysis figures show (issue 24): legends that cover no data, axis labels that match their ticks,
readable parameter-count axes, dodged methods, informative profile bands, compact diagnostics, one style for the
dense reference everywhere. Each test reads the figure's artists, limits and labels (the PNGs were also looked at)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from rliable import library

from analysis.curves import CURVE_COLUMNS
from analysis.diagnostics_plots import COLUMNS as DIAGNOSTIC_COLUMNS
from analysis.diagnostics_plots import diagnostics_figure
from analysis.plots import (
    REFERENCE_LABEL,
    count_label,
    interval_estimates_figure,
    learning_curve_figure,
    performance_profiles_figure,
    runs_for_informative_band,
    score_params_figure,
)
from analysis.records import run_label
from analysis.report import score_unit
from analysis.robustness import robustness_figure

REPS = 100


def _extent(fig, artist):
    FigureCanvasAgg(fig).draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


def _aggregate(rows):
    return pd.DataFrame(
        [{"agent": "sac", "label": run_label(m, s), "method": m, "sparsity": s, "iqm": v, "ci_low": lo, "ci_high": hi}
         for m, s, v, lo, hi in rows]
    )  # fmt: skip


def test_iqm_legend_covers_no_ci_bar_and_names_the_dashed_reference():
    # the case of the issue: a CI bar reaching the lower right corner, where the legend used to sit
    rows = [("dense", 0.0, 1.0, 0.97, 1.03), ("rigl", 0.9, 0.95, 0.93, 0.97), ("prune", 0.9, 1.0, 0.99, 1.02)]
    fig = interval_estimates_figure(_aggregate(rows), "sac", score_unit("dense"))
    (ax,) = fig.axes
    assert ax.get_legend() is None and len(fig.legends) == 1
    legend = _extent(fig, fig.legends[0])
    assert not legend.overlaps(_extent(fig, ax))  # below the axes, not over the data
    (text,) = [t.get_text() for t in fig.legends[0].get_texts()]
    assert text.startswith(f"{REFERENCE_LABEL}: the standard dense network (IQM; band: 95% CI)")
    assert "(standard)" not in text


def test_the_normalised_label_says_ratio_and_the_ticks_are_ratios():
    unit = score_unit("dense")
    assert "/ dense:100%" not in unit and "÷ dense mean" in unit and "1 = dense" in unit
    rows = [("dense", 0.0, 1.0, 0.97, 1.03), ("rigl", 0.9, 0.8, 0.75, 0.85)]
    (ax,) = interval_estimates_figure(_aggregate(rows), "sac", unit).axes
    low, high = ax.get_xlim()
    assert 0.7 < low < 0.75 and 1.03 < high < 1.1  # ratio ticks around 1, as the label says
    assert ax.get_xlabel() == f"IQM ({unit})"


def _per_env():
    rows = [("dense", 0.0, 1000.0, 217870), ("dense_matched", 0.9, 700.0, 23000), ("static", 0.9, 800.0, 23185),
            ("set", 0.9, 850.0, 23185), ("rigl", 0.9, 900.0, 23185), ("rigl", 0.8, 950.0, 45000)]  # fmt: skip
    return pd.DataFrame(
        [{"agent": "sac", "env": "Hopper", "label": run_label(m, s), "method": m, "sparsity": s, "mean": v,
          "ci_low": v - 20, "ci_high": v + 20, "active_params": float(n)} for m, s, v, n in rows]
    )  # fmt: skip


def test_score_vs_parameters_labels_several_count_ticks_and_dodges_methods_at_equal_counts():
    fig = score_params_figure(_per_env(), None, "sac", "return")
    (ax,) = fig.axes
    FigureCanvasAgg(fig).draw()
    low, high = ax.get_xlim()
    labelled = [t for t in ax.get_xticks() if low <= t <= high]
    names = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ax.get_xscale() == "log" and len(labelled) >= 3, labelled
    assert {"50k", "100k", "200k"} <= set(names), names  # counts readable as numbers
    assert [count_label(v) for v in (500, 20000, 1.5e6)] == ["500", "20k", "1.5M"]
    xs = {bars.get_label(): np.asarray(bars.lines[0].get_xdata(), dtype=float) for bars in ax.containers}
    at_23185 = [xs[m][0] for m in ("static", "set")] + [xs["rigl"][0]]
    assert len(set(np.round(at_23185, 3))) == 3  # three methods at one count: three x positions
    assert all(abs(x / 23185 - 1) < 0.05 for x in at_23185)  # ... each within 5% of the true count
    assert ax.get_legend() is None and len(fig.legends) == 1  # the legend sits below the panels


def test_profile_bands_are_drawn_only_where_they_inform():
    # rliable itself: the 95% CI of P(score > 0.5) from 4 runs (2 above) is all of [0, 1]; from 5 runs it is not
    taus = np.array([0.5])
    _, four = library.create_performance_profile({"x": np.array([[0.0], [0.0], [1.0], [1.0]])}, taus, reps=2000)
    _, five = library.create_performance_profile({"x": np.array([[0.0], [0.0], [1.0], [1.0], [1.0]])}, taus, reps=2000)
    assert (four["x"][0][0], four["x"][1][0]) == (0.0, 1.0)
    assert not (five["x"][0][0] == 0.0 and five["x"][1][0] == 1.0)
    assert runs_for_informative_band() == 5
    profile = np.linspace(1, 0, 11)
    profiles = {lab: (profile, np.stack([profile * 0.8, np.minimum(profile * 1.2, 1)])) for lab in ("dense_s0.0", "rigl_s0.9")}
    labels = pd.DataFrame([{"label": "dense_s0.0", "method": "dense", "sparsity": 0.0},
                           {"label": "rigl_s0.9", "method": "rigl", "sparsity": 0.9}])  # fmt: skip
    fig = performance_profiles_figure(
        profiles, np.linspace(0, 1, 11), labels, "return", runs={"dense_s0.0": 10, "rigl_s0.9": 3}
    )
    (ax,) = fig.axes
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1  # dense's band only
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["dense_s0.0 (n=10)", "rigl_s0.9 (n=3, no CI band)"]


def _diagnostics(steps_per_run: int) -> pd.DataFrame:
    rows = []
    for method, sparsity in (("dense", 0.0), ("rigl", 0.9)):
        for seed in range(2):
            for i in range(steps_per_run):
                for metric in ("dormant_0", "dormant_0.025", "dormant_0.1", "srank", "grad_snr", "churn_initial",
                               "churn_last", "weight_norm", "grad_norm"):  # fmt: skip
                    rows.append(("dqn", "CartPole", method, sparsity, run_label(method, sparsity), seed, 1000 * (i + 1),
                                 "q", metric, 0.1 * seed + i + (metric == "srank") * 100))  # fmt: skip
    return pd.DataFrame(rows, columns=DIAGNOSTIC_COLUMNS)


def test_diagnostics_with_one_measurement_are_a_compact_grid_of_labels_not_one_dot_curves():
    fig = diagnostics_figure(_diagnostics(1), "dqn / CartPole", REPS)
    width, height = fig.get_size_inches()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 9 and height <= 1.2 * width  # 3 x 3, not a 9 x 1 strip
    ax = visible[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["dense_s0.0", "rigl_s0.9"]  # the labels side by side
    assert "one measurement per run (gradient step 1000)" in fig.get_suptitle()
    curves = diagnostics_figure(_diagnostics(3), "dqn / CartPole", REPS)
    assert curves.axes[0].get_xlabel() == "gradient steps" and len(curves.legends) == 1


def test_the_dense_reference_looks_the_same_in_analyze_and_robustness_figures():
    curves = pd.DataFrame(
        [{"agent": "dqn", "env": "CartPole", "method": m, "sparsity": s, "label": run_label(m, s), "seed": seed,
          "step": 1000 * (i + 1), "return": 100.0 * i + seed} for m, s in (("dense", 0.0), ("rigl", 0.9))
         for seed in range(2) for i in range(3)], columns=CURVE_COLUMNS,
    )  # fmt: skip
    table = pd.DataFrame(
        [{"agent": "dqn", "env": "CartPole", "method": m, "sparsity": s, "sigma": sigma, "n_seeds": 2,
          "mean": 100.0 - sigma, "ci_low": 90.0 - sigma, "ci_high": 110.0 - sigma}
         for m, s in (("dense", 0.0), ("rigl", 0.9)) for sigma in (0.0, 0.5, 1.0)]
    )  # fmt: skip

    def style(fig, prefix):
        (line,) = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
        return line.get_color(), line.get_linestyle()

    in_analyze = style(learning_curve_figure(curves, "dqn / CartPole", REPS), "dense_s0.0")
    in_robustness = style(robustness_figure(table, "noise"), "dense s=0")
    assert in_analyze == in_robustness == ("black", "--")
    assert style(robustness_figure(table, "noise"), "rigl s=0.9")[0] != "black"


@pytest.mark.parametrize("value, text", [(999, "999"), (1000, "1k"), (27548, "27.548k"), (2e6, "2M")])
def test_count_labels(value, text):
    assert count_label(value) == text


def test_an_empty_poi_column_is_explained(tmp_path):
    """Without a dense_matched run at a label's sparsity its PoI is empty; results.md says why and what to train."""
    from analysis.report import analyze
    from tests.test_analysis import make_run

    for method, sparsity in (("dense", 0.0), ("rigl", 0.9), ("set", 0.8)):
        for seed in range(2):
            make_run(tmp_path, method=method, sparsity=sparsity, seed=seed, returns=np.arange(10.0) + seed)
    result = analyze(tmp_path, reps=REPS, make_plots=False)
    assert result.aggregate.set_index("label").loc[["rigl_s0.9", "set_s0.8"], "poi_vs_matched"].isna().all()
    note = result.poi_note
    assert note.startswith("poi_vs_matched is empty for sac/set_s0.8, sac/rigl_s0.9: no completed dense_matched run")
    assert "sparsity=dense_matched sparsity.sparsity=0.8,0.9" in note
    assert f"- Note: {note}." in (tmp_path / "analysis" / "results.md").read_text()
    make_run(tmp_path, method="dense_matched", sparsity=0.9, seed=0, returns=np.arange(10.0))
    make_run(tmp_path, method="dense_matched", sparsity=0.8, seed=0, returns=np.arange(10.0))
    assert analyze(tmp_path, reps=REPS, make_plots=False).poi_note is None
