"""Learning parity, small: the population engine learns CartPole DQN within the SB3 path's budget and threshold.

Same budget, network and threshold as ``tests/test_learning.py``'s DQN case (dense and RigL-90, seed 0), trained as
one population of two members.
"""

from __future__ import annotations

from agents.population.trainer import PopulationTrainer
from sparse_rl.population_run import plan_member
from tests.agent_helpers import compose_run
from tests.test_learning import CASES, COMMON


def test_population_dqn_learns_cartpole_like_the_sb3_path(tmp_path):
    overrides, threshold = CASES["dqn"]
    plans = []
    for method in ("dense", "rigl"):
        extra = [o for o in overrides if method != "dense" or not o.startswith("sparsity.")]
        if method == "rigl":
            extra.append("sparsity.sparsity=0.9")
        cfg = compose_run(["agent=dqn", f"sparsity={method}", *extra, *COMMON, f"run_dir={tmp_path}/{method}"])
        plans.append(plan_member(cfg))
    trainer = PopulationTrainer(plans, [64, 64], tmp_path / "population", "cpu", False)
    trainer.learn()
    summaries = trainer.finish()
    for summary in summaries:
        assert summary["score"] > threshold, f"{summary['method']} scored {summary['score']:.1f} <= {threshold}"
    assert summaries[1]["topology"]["num_updates"] > 0
