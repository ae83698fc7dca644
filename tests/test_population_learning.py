"""Learning parity, small: the population engine learns CartPole DQN, Pendulum SAC and CartPole PPO within the SB3
path's budgets and thresholds.

Same budget, network and threshold as ``tests/test_learning.py``'s DQN, SAC and PPO cases (dense and RigL-90, seed 0),
trained as one population of two members per agent (PPO without observation/reward normalisation, which the engine
does not implement; the SB3 path's case normalises). The larger check (>= 5 seeds per path, CIs) is
``scripts/learning_parity.py``, reported in docs/testing.md.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiment.population import plan_member
from experiment.population_records import PopulationRun
from tests.agent_helpers import compose_run
from tests.test_learning import CASES, COMMON

NOT_IMPLEMENTED = {"ppo": ["agent.normalize=false"]}  # configs/agent/ppo.yaml normalises (agents/population/ppo.py)


@pytest.mark.parametrize("agent", ["dqn", "sac", "ppo"])
def test_population_learns_like_the_sb3_path(agent, tmp_path):
    overrides, threshold = CASES[agent]
    plans = []
    for method in ("dense", "rigl"):
        extra = [o for o in overrides if method != "dense" or not o.startswith("sparsity.")]
        if method == "rigl":
            extra.append("sparsity.sparsity=0.9")
        extra += NOT_IMPLEMENTED.get(agent, [])
        cfg = compose_run([f"agent={agent}", f"sparsity={method}", *extra, *COMMON, f"run_dir={tmp_path}/{method}"])
        plans.append(plan_member(cfg))
    net_arch = OmegaConf.to_container(plans[0].cfg.agent.net_arch)  # as the launcher passes it
    trainer = PopulationRun(plans, net_arch, tmp_path / "population", "cpu", False)
    trainer.learn()
    summaries = trainer.finish()
    for summary in summaries:
        assert summary["score"] > threshold, f"{agent}/{summary['method']} scored {summary['score']:.1f} <= {threshold}"
    assert summaries[1]["topology"]["num_updates"] > 0
