"""Equal-parameter baselines and sweeps through Hydra's launchers (joblib, submitit_local), then the analysis."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiment.plan import plan_run
from experiment.sb3 import train
from tests.agent_helpers import tiny_run

TINY_DQN = [
    "agent=dqn", "env=CartPole", "agent.total_timesteps=300", "agent.sb3.learning_starts=100", "agent.eval_freq=150",
    "agent.eval_episodes=2", "agent.net_arch=[16,16]", "progress_bar=false", "tensorboard=false",
    "sparsity.update_interval=10",
]  # fmt: skip


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def summaries(root: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text()) for p in root.rglob("summary.json")}


@pytest.mark.parametrize("agent", ["sac", "ppo", "dqn"])
def test_dense_matched_has_the_sparse_active_count(agent, tmp_path):
    sparse = train(plan_run(tiny_run(agent, "static", tmp_path / "sparse")))
    matched = train(plan_run(tiny_run(agent, "dense_matched", tmp_path / "matched")))
    assert matched["method"] == "dense_matched" and matched["sparsity"] == 0.9
    assert matched["params"]["active"] == matched["params"]["total"]  # really dense
    for group, report in matched["equal_parameters"].items():
        ours = matched["groups"][group]["active_with_bias"]
        assert ours == report["params"]
        target = sparse["groups"][group]["active_with_bias"]
        assert report["target"] == target
        hidden_unit = 2 * max(report["hidden"]) + 100  # one hidden unit's worth of parameters, roughly
        assert abs(ours - target) <= max(0.01 * target, hidden_unit), (group, ours, target)


def test_sparse_wide_matches_the_dense_count(tmp_path):
    dense = train(plan_run(tiny_run("sac", "dense", tmp_path / "dense")))
    wide = train(plan_run(tiny_run("sac", "rigl", tmp_path / "wide", "sparsity.wide=true")))
    assert wide["wide"] and wide["net_arch"]["pi"][0] > 32
    assert wide["params"]["active_with_bias"] == pytest.approx(dense["params"]["total_with_bias"], rel=0.01)
    assert wide["params"]["active"] == pytest.approx(0.1 * wide["params"]["total"], abs=2)


def test_joblib_multirun_then_analysis(tmp_path):
    root = tmp_path / "runs"
    result = run_cli(
        "sparse_rl.run", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", "sparsity=dense,rigl", "seed=0,1",
        f"run_root={root}", *TINY_DQN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = summaries(root)
    assert sorted(runs) == [f"dqn/CartPole/{m}/seed_{s}" for m in ("dense_s0.0", "rigl_s0.9") for s in (0, 1)]
    assert all(s["status"] == "completed" for s in runs.values())
    analysis = run_cli("sparse_rl.analyze", str(root), "--reps", "100")
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    out = root / "analysis"
    with open(out / "aggregate.csv") as f:
        labels = {row["label"] for row in csv.DictReader(f)}
    assert labels == {"dense_s0.0", "rigl_s0.9"}
    assert (out / "results.md").read_text().count("rigl_s0.9") >= 1
    for stem in ("curves_dqn_CartPole", "params_dqn", "iqm_dqn"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").exists(), stem


def test_a_failed_job_is_recorded_and_does_not_stop_the_sweep(tmp_path):
    root = tmp_path / "runs"
    result = run_cli(
        "sparse_rl.run", "-m", "sparsity=set", "seed=0", "env.id=CartPole-v1,NoSuchEnv-v9", f"run_root={root}",
        "run_dir=${run_root}/${env.id}", *TINY_DQN,
    )  # fmt: skip
    # (an env id gymnasium does not know fails when the env is built, after validation)
    assert result.returncode == 1, result.stderr[-3000:]  # the sweep went on, and its exit status says one failed
    assert "FAILED" in result.stderr and "sweep: 2 job(s): 1 completed, 1 failed" in result.stderr
    runs = summaries(root)
    assert runs["CartPole-v1"]["status"] == "completed"
    assert runs["NoSuchEnv-v9"]["status"] == "failed" and "NoSuchEnv" in runs["NoSuchEnv-v9"]["error"]


def test_a_rejected_job_is_skipped_without_stopping_the_sweep(tmp_path):
    root = tmp_path / "runs"
    result = run_cli(
        "sparse_rl.run", "-m", "sparsity=rigl", "seed=0", "sparsity.sparsity=0.5,1.5", f"run_root={root}", *TINY_DQN
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "SKIPPED: sparsity must be in [0, 1), got 1.5" in result.stderr
    assert "sweep: 2 job(s): 1 completed, 1 skipped" in result.stderr
    assert list(summaries(root)) == ["dqn/CartPole/rigl_s0.5/seed_0"]
    assert not (root / "dqn/CartPole/rigl_s1.5").exists()


def test_submitit_local_launcher(tmp_path):
    root = tmp_path / "runs"
    result = run_cli(
        "sparse_rl.run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "sparsity=static", "seed=3",
        f"run_root={root}", *TINY_DQN,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (summary,) = summaries(root).values()
    assert summary["status"] == "completed" and summary["seed"] == 3 and summary["method"] == "static"
