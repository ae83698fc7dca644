"""What a newcomer meets first: small budgets say what they will not do and still leave a result; dense is dense."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from experiment.plan import plan_run
from experiment.preflight import budget_warnings
from experiment.sb3 import train
from tests.agent_helpers import compose_run, tiny_run


def progress_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "progress.csv") as f:
        return list(csv.DictReader(f))


# --- item 1: budgets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["agent=sac", "agent.total_timesteps=3000"], ["agent.sb3.learning_starts", "agent.eval_freq"]),
        (["agent=sac", "agent.total_timesteps=10000"], ["agent.sb3.learning_starts"]),  # learns from step 10,001
        (["agent=sac", "agent.total_timesteps=10001"], []),
        (["agent=sac", "env=Hopper", "agent.total_timesteps=3000"], ["agent.eval_freq"]),  # Hopper warms up 1,000 steps
        (["agent=dqn", "env=CartPole", "agent.total_timesteps=1500"], ["agent.eval_freq"]),
        (["agent=ppo", "env=Hopper", "agent.total_timesteps=4096"], ["agent.eval_freq"]),
        (["agent=ppo", "env=Hopper", "agent.total_timesteps=8200"], []),  # 5 rollouts of 2,048 reach eval_freq 10,240
        (["agent=ppo", "env=Hopper", "agent.n_envs=4", "agent.total_timesteps=10240"], []),
        (["agent=sac"], []),  # the paper's budgets: nothing to say
        (["agent=dqn", "env=CartPole"], []),
        (["agent=ppo", "env=Hopper"], []),
    ],
)
def test_budget_warnings_name_the_key_to_change(overrides, expected):
    warnings = budget_warnings(compose_run(overrides))
    assert [w.rsplit("; lower ", 1)[1] for w in warnings] == expected
    assert all("\n" not in w for w in warnings)


def test_a_smoke_budget_warns_and_still_evaluates_logs_and_scores(tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_run("dqn", "rigl", run_dir, "agent.total_timesteps=250", "agent.sb3.learning_starts=1000",
                   "agent.eval_freq=1000", "tensorboard=true")  # fmt: skip
    plan = plan_run(cfg)
    assert len(plan.warnings) == 2 and "trains nothing" in plan.warnings[0] and "only one at" in plan.warnings[1]
    summary = train(plan)
    with np.load(run_dir / "evaluations.npz") as data:
        assert data["timesteps"].tolist() == [250]  # one evaluation, at the end
    assert summary["score"] is not None
    rows = progress_rows(run_dir)
    assert rows[-1]["time/total_timesteps"] == "250" and rows[-1]["eval/mean_reward"]  # the evaluation is logged
    assert any(p.stat().st_size > 200 for p in run_dir.rglob("events.out.tfevents.*"))  # scalars, not just a header


def test_a_budget_with_evaluations_gets_no_extra_final_one(tmp_path):
    run_dir = tmp_path / "run"
    summary = train(plan_run(tiny_run("dqn", "dense", run_dir, "agent.eval_freq=100", "agent.total_timesteps=250")))
    with np.load(run_dir / "evaluations.npz") as data:
        assert data["timesteps"].tolist() == [100, 200]
    assert summary["score"] is not None


def test_cli_says_the_warnings_before_training(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "sparse_rl.run", "agent=sac", "env=Pendulum", "agent.total_timesteps=300",
           "agent.eval_episodes=1", "agent.net_arch=[16,16]", "progress_bar=false", f"run_dir={run_dir}"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 2
    assert lines[0].endswith("the network trains nothing; lower agent.sb3.learning_starts")
    assert lines[1].endswith("only one at the end of training; lower agent.eval_freq")
    assert json.loads((run_dir / "summary.json").read_text())["score"] is not None
    assert len(progress_rows(run_dir)) == 1


# --- item 4: a dense network carries no sparsity -----------------------------------------------------------------


def test_dense_with_a_sparsity_is_labelled_and_recorded_as_dense(tmp_path):
    cfg = compose_run(["agent=dqn", "env=CartPole", "sparsity=dense", "sparsity.sparsity=0.9", f"run_root={tmp_path}"])
    assert cfg.run_dir == f"{tmp_path}/dqn/CartPole/dense_s0.0/seed_0"
    cfg = tiny_run("dqn", "dense", tmp_path / "run", "sparsity.sparsity=0.9")
    plan = plan_run(cfg)
    assert plan.sparsity.sparsity == 0.0 and cfg.sparsity.sparsity == 0.0
    assert "sparsity.sparsity=0.9 is ignored" in plan.warnings[0] and "dense_matched" in plan.warnings[0]
    summary = train(plan)
    assert summary["sparsity"] == 0.0 and summary["params"]["active"] == summary["params"]["total"]
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").sparsity.sparsity == 0.0


@pytest.mark.parametrize(
    "overrides, label",
    [(["sparsity=dense"], "dense_s0.0"), (["sparsity=rigl", "sparsity.sparsity=0.95"], "rigl_s0.95"),
     (["sparsity=rigl", "sparsity.wide=true"], "rigl_wide_s0.9"), (["sparsity=dense_matched"], "dense_matched_s0.9"),
     (["sparsity=dense_matched", "sparsity.sparsity=0.8"], "dense_matched_s0.8")],
)  # fmt: skip
def test_run_dir_labels(overrides, label):
    cfg = compose_run([*overrides, "run_root=r"])
    assert cfg.run_dir == f"r/sac/HalfCheetah/{label}/seed_0"
