"""Learning sanity: each agent learns a fast env within a tiny budget, dense and RigL at 90% sparsity.

Thresholds sit well above a random policy (CartPole ≈ 22, Pendulum ≈ -1,200 to -1,500) and below what the
dense agent reaches at this budget (seeded, CPU); see docs/testing.md for the calibration runs.
"""

from __future__ import annotations

import pytest

from experiment.plan import plan_run
from experiment.sb3 import train
from tests.agent_helpers import compose_run

COMMON = ["progress_bar=false", "tensorboard=false", "checkpoint_freq=0", "seed=0"]
CASES = {
    "ppo": (["env=CartPole", "agent.total_timesteps=12288", "agent.sb3.n_steps=512", "agent.eval_freq=3072"], 150.0),
    "sac": (
        ["env=Pendulum", "agent.total_timesteps=8000", "agent.net_arch=[128,128]", "agent.sb3.learning_starts=500",
         "agent.eval_freq=1000", "agent.eval_episodes=5"],
        -600.0,
    ),
    "td3": (  # sfujim/TD3's 25k random start steps lowered to SAC's 500 here (docs/testing.md calibration)
        ["env=Pendulum", "agent.total_timesteps=8000", "agent.net_arch=[128,128]", "agent.sb3.learning_starts=500",
         "agent.eval_freq=1000", "agent.eval_episodes=5"],
        -600.0,
    ),
    "dqn": (
        ["env=CartPole", "agent.total_timesteps=20000", "agent.net_arch=[64,64]", "agent.eval_freq=2000",
         "agent.eval_episodes=5", "sparsity.update_interval=200"],
        100.0,
    ),
}  # fmt: skip


@pytest.mark.parametrize("method", ["dense", "rigl"])
@pytest.mark.parametrize("agent", list(CASES))
def test_agent_learns_within_a_tiny_budget(agent, method, tmp_path):
    overrides, threshold = CASES[agent]
    if method == "dense":
        overrides = [o for o in overrides if not o.startswith("sparsity.")]
    extra = ["sparsity.sparsity=0.9"] if method != "dense" else []
    cfg = compose_run([f"agent={agent}", f"sparsity={method}", *overrides, *extra, *COMMON, f"run_dir={tmp_path}"])
    summary = train(plan_run(cfg))
    assert summary["score"] > threshold, f"{agent}/{method} scored {summary['score']:.1f} <= {threshold}"
    if method == "rigl":
        assert summary["topology"]["num_updates"] > 0
        assert summary["params"]["active"] == pytest.approx(0.1 * summary["params"]["total"], abs=1)
