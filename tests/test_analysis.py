"""Analysis of run directories: loading, scoring, normalisation, rliable aggregation, tables, plots, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from analysis import (
    MATCHED_METHOD,
    NormalizationError,
    aggregate_table,
    analyze,
    find_run_dirs,
    iqm,
    last_fraction_mean,
    load_run,
    load_runs,
    n_last,
    normalize,
    per_env_table,
    probability_of_improvement,
    run_label,
    score_matrix,
    scores_frame,
)
from analysis.aggregate import ScoreMatrix
from analysis.curves import CURVE_COLUMNS, mean_curves
from analysis.plots import interval_estimates_figure, learning_curve_figure

REPS = 200  # bootstrap replications in tests (the CLI default is larger)


def make_run(
    root: Path,
    agent: str = "sac",
    env: str = "HalfCheetah",
    method: str = "dense",
    sparsity: float = 0.0,
    seed: int = 0,
    returns: np.ndarray | None = None,
    status: str | None = "completed",
    active: int | None = 1000,
    eval_every: int = 1000,
    episodes: int = 3,
) -> Path:
    """A run directory as the training command writes it; ``returns`` are per-eval means (episodes spread ±1)."""
    run = root / agent / env / f"{method}_s{sparsity}" / f"seed_{seed}"
    (run / ".hydra").mkdir(parents=True)
    config = {
        "agent": {"name": agent},
        "env": {"name": env},
        "sparsity": {"method": method, "sparsity": sparsity},
        "seed": seed,
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    returns = np.arange(20.0) if returns is None else np.asarray(returns, dtype=float)
    spread = np.linspace(-1.0, 1.0, episodes)
    results = returns[:, None] + spread[None, :]  # per-eval mean over episodes is exactly `returns`
    timesteps = eval_every * np.arange(1, len(returns) + 1)
    np.savez(run / "evaluations.npz", timesteps=timesteps, results=results, ep_lengths=np.full_like(results, 1000))
    if status is not None:
        summary = {
            "status": status,
            "score": float(np.mean(returns[-max(1, len(returns) // 10) :])),
            "agent": agent,
            "env": env,
            "method": method,
            "sparsity": sparsity,
            "seed": seed,
            "params": {"active": active, "total": active, "active_with_bias": active, "total_with_bias": active},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    return run


# --- per-run score ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (5, 1), (10, 1), (19, 1), (20, 2), (30, 3), (40, 4), (101, 10)])
def test_n_last_is_floor_of_ten_percent_at_least_one(n: int, expected: int) -> None:
    assert n_last(n) == expected


def test_score_is_mean_of_last_ten_percent_of_eval_means(tmp_path: Path) -> None:
    returns = np.array([float(i * i) for i in range(20)])
    run = load_run(make_run(tmp_path, returns=returns))
    assert run.score == pytest.approx((18 * 18 + 19 * 19) / 2)  # 20 evals → the last 2
    assert last_fraction_mean(returns[:5]) == 16.0  # 5 evals → the last one
    np.testing.assert_allclose(run.returns, returns)  # episodes are averaged per evaluation
    assert run.usable_for_scores and run.status == "completed" and run.active_params == 1000
    assert (run.agent, run.env, run.method, run.sparsity, run.seed, run.label) == (
        "sac",
        "HalfCheetah",
        "dense",
        0.0,
        0,
        "dense_s0.0",
    )


def test_score_is_recomputed_not_copied_from_summary(tmp_path: Path) -> None:
    path = make_run(tmp_path)
    summary = json.loads((path / "summary.json").read_text())
    summary["score"] = 12345.0
    (path / "summary.json").write_text(json.dumps(summary))
    run = load_run(path)
    assert run.score == pytest.approx(18.5)
    assert run.usable_for_scores
    assert "12345" in run.reasons(("note",))


def test_env_with_slash_is_read_from_files_not_path(tmp_path: Path) -> None:
    make_run(tmp_path, env="dmc/cheetah-run")
    runs = load_runs(tmp_path)
    assert [r.env for r in runs] == ["dmc/cheetah-run"]


# --- broken and incomplete runs ---------------------------------------------------------------------------


def test_broken_and_incomplete_runs_are_reported_not_raised(tmp_path: Path) -> None:
    good = make_run(tmp_path, seed=0)
    no_summary = make_run(tmp_path, seed=1, status=None)
    failed = make_run(tmp_path, seed=2, status="failed")
    running = make_run(tmp_path, seed=3, status="running", returns=np.arange(10.0))
    truncated = make_run(tmp_path, seed=4)
    data = (truncated / "evaluations.npz").read_bytes()
    (truncated / "evaluations.npz").write_bytes(data[: len(data) // 2])
    no_npz = make_run(tmp_path, seed=5)
    (no_npz / "evaluations.npz").unlink()
    bad_json = make_run(tmp_path, seed=6)
    (bad_json / "summary.json").write_text('{"status": "compl')
    short = make_run(tmp_path, seed=7, returns=np.arange(12.0))  # "completed" but fewer evals than peers

    runs = {r.path: r for r in load_runs(tmp_path)}
    assert len(runs) == 8
    assert runs[good].usable_for_scores and not runs[good].reasons()
    assert "summary.json missing" in runs[no_summary].reasons()
    assert runs[no_summary].usable_for_curves and not runs[no_summary].usable_for_scores
    assert "failed" in runs[failed].reasons() and not runs[failed].usable_for_curves
    assert "running" in runs[running].reasons()
    assert runs[running].usable_for_curves and not runs[running].usable_for_scores
    assert "evaluations.npz unreadable" in runs[truncated].reasons() and not runs[truncated].usable_for_curves
    assert "evaluations.npz missing" in runs[no_npz].reasons()
    assert "summary.json unreadable" in runs[bad_json].reasons()
    assert "fewer evaluations than peers" in runs[short].reasons() and not runs[short].usable_for_scores
    assert list(scores_frame(list(runs.values()))["seed"]) == [0]


def test_duplicate_runs_are_flagged(tmp_path: Path) -> None:
    make_run(tmp_path / "a", seed=0)
    make_run(tmp_path / "b", seed=0)
    runs = load_runs(tmp_path)
    assert [r.usable_for_scores for r in runs] == [True, False]
    assert "duplicate of" in runs[1].reasons()


def test_discovery_skips_output_dir_and_hydra_dirs(tmp_path: Path) -> None:
    make_run(tmp_path, seed=0)
    make_run(tmp_path / "analysis", seed=1)
    assert len(find_run_dirs(tmp_path)) == 2
    assert len(find_run_dirs(tmp_path, skip=(tmp_path / "analysis",))) == 1


# --- normalisation -----------------------------------------------------------------------------------------


def _frame_of(tmp_path: Path, cells: dict[tuple[str, str, float], list[float]]) -> pd.DataFrame:
    """Completed runs whose scores equal the given values (constant return curves)."""
    for (env, method, sparsity), values in cells.items():
        for seed, value in enumerate(values):
            make_run(tmp_path, env=env, method=method, sparsity=sparsity, seed=seed, returns=np.full(20, value))
    return scores_frame(load_runs(tmp_path))


def test_dense_normalisation_divides_by_mean_dense_score_per_env(tmp_path: Path) -> None:
    frame = _frame_of(
        tmp_path,
        {
            ("Hopper", "dense", 0.0): [90.0, 110.0],
            ("Hopper", "rigl", 0.9): [50.0, 150.0],
            ("Ant", "dense", 0.0): [10.0, 30.0],
            ("Ant", "rigl", 0.9): [40.0, 5.0],
        },
    )
    norm = normalize(frame, "dense").set_index(["env", "label", "seed"])["score"]
    assert norm[("Hopper", "rigl_s0.9", 0)] == pytest.approx(0.5)
    assert norm[("Hopper", "rigl_s0.9", 1)] == pytest.approx(1.5)
    assert norm[("Ant", "rigl_s0.9", 0)] == pytest.approx(2.0)
    assert norm[("Ant", "dense_s0.0", 1)] == pytest.approx(1.5)
    raw = normalize(frame, "raw")
    assert (raw["score"] == raw["raw_score"]).all()


def test_dense_normalisation_without_dense_run_errors_clearly(tmp_path: Path) -> None:
    frame = _frame_of(tmp_path, {("Hopper", "dense", 0.0): [1.0], ("Ant", "rigl", 0.9): [2.0]})
    with pytest.raises(NormalizationError, match="sac/Ant"):
        normalize(frame, "dense")


# --- rliable aggregation -----------------------------------------------------------------------------------


def test_iqm_matches_trimmed_mean_and_ci_brackets_it() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 3))
    before = np.random.get_state()
    est = iqm(ScoreMatrix("x", ("a", "b", "c"), scores, 24), reps=REPS, seed=1)
    after = np.random.get_state()
    assert np.array_equal(before[1], after[1]) and before[2] == after[2]  # the global RNG is restored
    assert est.value == pytest.approx(stats.trim_mean(scores.ravel(), 0.25))
    assert est.low < est.value < est.high
    assert iqm(ScoreMatrix("x", ("a", "b", "c"), scores, 24), reps=REPS, seed=1) == est  # seeded: reproducible


def test_iqm_ci_is_independent_of_global_rng_state() -> None:
    scores = np.arange(12.0).reshape(4, 3)
    matrix = ScoreMatrix("x", ("a", "b", "c"), scores, 12)
    np.random.seed(123)
    first = iqm(matrix, reps=REPS, seed=5)
    np.random.seed(999)
    assert iqm(matrix, reps=REPS, seed=5) == first


def test_score_matrix_is_seeds_by_envs_and_truncates_to_common_seed_count(tmp_path: Path) -> None:
    frame = _frame_of(tmp_path, {("Ant", "rigl", 0.9): [1.0, 2.0, 3.0], ("Hopper", "rigl", 0.9): [4.0, 5.0]})
    matrix = score_matrix(frame, "rigl_s0.9")
    assert matrix.envs == ("Ant", "Hopper")
    np.testing.assert_allclose(matrix.scores, [[1.0, 4.0], [2.0, 5.0]])
    assert (matrix.n_seeds, matrix.n_runs) == (2, 5)


def test_probability_of_improvement_of_dominating_method_is_one() -> None:
    better = ScoreMatrix("x", ("a", "b"), np.array([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]), 6)
    worse = ScoreMatrix("y", ("a", "b"), np.array([[1.0, 2.0], [3.0, 4.0]]), 4)
    assert probability_of_improvement(better, worse, reps=REPS).value == pytest.approx(1.0)
    assert probability_of_improvement(worse, better, reps=REPS).value == pytest.approx(0.0)


def test_tables_on_known_scores(tmp_path: Path) -> None:
    cells = {
        ("Ant", "dense", 0.0): [10.0, 12.0, 14.0, 16.0],
        ("Hopper", "dense", 0.0): [1.0, 2.0, 3.0, 4.0],
        ("Ant", "rigl", 0.9): [20.0, 21.0, 22.0, 23.0],
        ("Hopper", "rigl", 0.9): [5.0, 6.0, 7.0, 8.0],
        ("Ant", MATCHED_METHOD, 0.9): [0.0, 1.0, 2.0, 3.0],
        ("Hopper", MATCHED_METHOD, 0.9): [0.0, 1.0, 2.0, 3.0],
    }
    frame = _frame_of(tmp_path, cells)
    per_env = per_env_table(frame, reps=REPS).set_index(["env", "label"])
    assert per_env.loc[("Ant", "dense_s0.0"), "mean"] == pytest.approx(13.0)
    assert per_env.loc[("Ant", "dense_s0.0"), "std"] == pytest.approx(np.std([10, 12, 14, 16], ddof=1))
    assert per_env.loc[("Ant", "dense_s0.0"), "n_seeds"] == 4
    assert per_env.loc[("Ant", "dense_s0.0"), "ci_low"] <= 13.0 <= per_env.loc[("Ant", "dense_s0.0"), "ci_high"]
    agg = aggregate_table(frame, reps=REPS).set_index("label")
    assert list(agg.index) == ["dense_s0.0", "dense_matched_s0.9", "rigl_s0.9"]
    rigl = cells[("Ant", "rigl", 0.9)] + cells[("Hopper", "rigl", 0.9)]
    assert agg.loc["rigl_s0.9", "iqm"] == pytest.approx(stats.trim_mean(rigl, 0.25))
    assert (agg.loc["rigl_s0.9", "n_envs"], agg.loc["rigl_s0.9", "n_seeds"]) == (2, 4)
    assert agg.loc["rigl_s0.9", "poi_vs_matched"] == pytest.approx(1.0)
    assert np.isnan(agg.loc["dense_s0.0", "poi_vs_matched"]) and np.isnan(
        agg.loc[run_label(MATCHED_METHOD, 0.9), "poi_vs_matched"]
    )


# --- end to end --------------------------------------------------------------------------------------------


def _synthetic_runs(root: Path) -> None:
    """Two SAC envs × (dense, dense_matched, rigl at 0.9) × 4 seeds, plus some broken runs."""
    rng = np.random.default_rng(0)
    steps = np.linspace(0.0, 1.0, 20)
    for env, scale in (("HalfCheetah", 1000.0), ("dmc/cheetah-run", 500.0)):
        for method, sparsity, level, active in (
            ("dense", 0.0, 1.0, 217870),
            (MATCHED_METHOD, 0.9, 0.7, 22000),
            ("rigl", 0.9, 0.95, 23185),
        ):
            for seed in range(4):
                curve = scale * level * steps + rng.normal(0.0, scale * 0.02, size=20)
                make_run(root, env=env, method=method, sparsity=sparsity, seed=seed, returns=curve, active=active)
    make_run(root, method="rigl", sparsity=0.9, seed=9, status="running", returns=np.arange(5.0))
    make_run(root, method="static", sparsity=0.9, seed=0, status="failed")


def test_analyze_writes_tables_and_plots(tmp_path: Path) -> None:
    _synthetic_runs(tmp_path)
    result = analyze(tmp_path, normalization="dense", reps=REPS)
    out = tmp_path / "analysis"
    assert result.out == out
    agg = result.aggregate.set_index("label")
    assert agg.loc["dense_s0.0", "iqm"] == pytest.approx(1.0, abs=0.05)
    assert agg.loc["rigl_s0.9", "poi_vs_matched"] > 0.9
    assert set(result.problem_runs["usable"]) == {"curves", "no"}
    assert len(pd.read_csv(out / "aggregate.csv")) == 3
    assert len(pd.read_csv(out / "per_env.csv")) == 6
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cli_end_to_end(tmp_path: Path) -> None:
    _synthetic_runs(tmp_path)
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "sparse_rl.analyze", str(tmp_path), "--out", str(out), "--reps", str(REPS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rigl_s0.9" in proc.stdout and "status 'failed'" in proc.stdout and "status 'running'" in proc.stdout
    for name in ("results.md", "per_env.csv", "aggregate.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0
    for stem in ("curves_sac_HalfCheetah", "curves_sac_dmc-cheetah-run", "params_sac", "iqm_sac", "profile_sac"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"
    assert (out / "curves_sac_HalfCheetah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "iqm_sac.pdf").read_bytes()[:5] == b"%PDF-"
    assert "| rigl_s0.9 |" in (out / "results.md").read_text().replace("| sac | rigl_s0.9 |", "| rigl_s0.9 |")


def test_analysis_imports_neither_sb3_nor_gymnasium() -> None:
    code = (
        "import sys, sparse_rl.analyze, analysis, sparse_rl.width\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('stable_baselines3', 'gymnasium')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_cli_fails_with_one_line_on_empty_dir(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_rl.analyze", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "no usable run" in proc.stderr
    assert not (tmp_path / "analysis").exists()


def test_cli_dense_normalisation_without_dense_fails_clearly(tmp_path: Path) -> None:
    make_run(tmp_path, method="rigl", sparsity=0.9)
    cmd = [sys.executable, "-m", "sparse_rl.analyze", str(tmp_path), "--normalize", "dense", "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "sac/HalfCheetah" in proc.stderr


def test_a_dense_run_recorded_with_a_sparsity_is_analysed_as_dense(tmp_path: Path) -> None:
    make_run(tmp_path, method="dense", sparsity=0.9, seed=0)  # written before dense runs were labelled s0.0
    make_run(tmp_path, method="dense", sparsity=0.0, seed=1)
    runs = load_runs(tmp_path)
    assert sorted((r.label, r.sparsity, r.seed) for r in runs) == [("dense_s0.0", 0.0, 0), ("dense_s0.0", 0.0, 1)]
    assert "trained dense" in next(r for r in runs if r.seed == 0).reasons(("note",))
    result = analyze(tmp_path, reps=REPS, make_plots=False)
    assert list(result.aggregate["label"]) == ["dense_s0.0"] and list(result.per_env["sparsity"]) == [0.0]


# --- plots show every point, scale to the data, bootstrap bands, interval estimates --------------------------------


def _curves(returns_by_seed: dict[int, list[float]], method: str = "dense", sparsity: float = 0.0) -> pd.DataFrame:
    rows = [
        {"agent": "dqn", "env": "Acrobot", "method": method, "sparsity": sparsity, "label": run_label(method, sparsity),
         "seed": seed, "step": 1000 * (i + 1), "return": r}
        for seed, returns in returns_by_seed.items() for i, r in enumerate(returns)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _drawn_y(ax) -> np.ndarray:
    """Every y value drawn as a line or marker in ``ax``, except reference lines spanning the axes."""
    ys = [line.get_ydata() for line in ax.get_lines() if len(line.get_xdata()) and line.get_transform() == ax.transData]
    return np.concatenate([np.asarray(y, dtype=float) for y in ys])


def test_curve_band_is_a_bootstrap_that_stays_within_the_seeds() -> None:
    stats_ = mean_curves(_curves({0: [-500.0, -300.0], 1: [-60.0, -250.0]}, method="rigl", sparsity=0.9), reps=REPS)
    first = stats_.iloc[0]
    assert first["mean"] == pytest.approx(-280.0)
    assert -500.0 <= first["low"] < first["mean"] < first["high"] <= -60.0  # a t-interval over 2 seeds: -3,075..2,515
    assert mean_curves(_curves({0: [1.0, 2.0]}), reps=REPS)[["low", "high"]].isna().all().all()  # one seed: no band
    again = mean_curves(_curves({0: [-500.0, -300.0], 1: [-60.0, -250.0]}, method="rigl", sparsity=0.9), reps=REPS)
    pd.testing.assert_frame_equal(stats_, again)  # seeded


def test_learning_curves_draw_a_single_evaluation_and_scale_to_the_data() -> None:
    fig = learning_curve_figure(_curves({0: [58.0], 1: [211.0]}), "dqn / Acrobot", reps=REPS)
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert 0 < 58.0 - low < 30 and 0 < high - 211.0 < 30  # scaled to 58..211, not -600..800
    marked = [line for line in ax.get_lines() if line.get_marker() not in ("None", "", None) and len(line.get_xdata()) == 1]
    assert {float(line.get_ydata()[0]) for line in marked} >= {58.0, 211.0, 134.5}  # each seed and the mean is visible


def test_every_curve_point_lies_inside_the_axes() -> None:
    rng = np.random.default_rng(0)
    data = pd.concat(
        [
            _curves({s: list(np.linspace(-500, -60, 10) + rng.normal(0, 30, 10)) for s in range(2)}),
            _curves({s: list(np.linspace(-500, -80, 10) + rng.normal(0, 30, 10)) for s in range(2)}, "rigl", 0.9),
        ],
        ignore_index=True,
    )
    fig = learning_curve_figure(data, "dqn / Acrobot", reps=REPS)
    (ax,) = fig.axes  # sparsity 0.9, the dense reference in it
    low, high = ax.get_ylim()
    drawn = _drawn_y(ax)
    assert low <= drawn.min() and drawn.max() <= high
    assert high - low < 1.3 * (data["return"].max() - data["return"].min())


def test_aggregates_are_interval_estimates_not_bars_from_zero() -> None:
    nan = float("nan")
    rows = [("dense", 0.0, -65.0, -70.0, -61.0), ("rigl", 0.9, -74.0, -80.0, -69.0), ("set", 0.9, -66.0, nan, nan)]
    aggregate = pd.DataFrame(
        [{"agent": "dqn", "label": run_label(m, s), "method": m, "sparsity": s, "iqm": v, "ci_low": lo, "ci_high": hi}
         for m, s, v, lo, hi in rows]
    )  # fmt: skip
    fig = interval_estimates_figure(aggregate, "dqn", "return")
    (ax,) = fig.axes
    assert not ax.containers and not [p for p in ax.patches if p.get_height() and p.get_width() and p.get_x() == 0]
    low, high = ax.get_xlim()
    assert -82.0 < low < -80.0 and -61.0 < high < -59.0  # scaled to the intervals: -65 and -74 far apart, 0 not shown
    points = {round(float(line.get_xdata()[0]), 6) for line in ax.get_lines() if line.get_marker() == "o"}
    assert points == {-74.0, -66.0}  # one point per sparse label; the dense reference is the dashed line
