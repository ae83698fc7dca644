"""A population member's start: the SB3 path's model of its run, which the member copies in (issue 20).

Apart from :mod:`experiment.population` (the launcher's entry point, which imports the population's records), so
that :mod:`experiment.population_records` builds members without an import circle.
"""

from __future__ import annotations

from agents import attach_controller
from agents.population.trainer import MemberStart
from envs import make_vec_env
from experiment.plan import Plan
from experiment.sb3 import build_plan_model


def sb3_start(plan: Plan) -> MemberStart:
    """The SB3 path's start of ``plan``'s run: its model built as ``experiment.sb3.train`` builds it (same seed, init,
    equal-parameter widths; on the CPU, an off-policy replay buffer of one batch) and the controller attached as there (masks
    drawn from the run's seed). A population member copies it in, so its initial weights, masks and warm-up actions
    are the SB3 path's (design decision 34)."""
    cfg = plan.cfg
    env = make_vec_env(plan.env, int(cfg.agent.n_envs), int(cfg.seed))
    try:
        small_replay = {"buffer_size": int(cfg.agent.sb3.batch_size)} if "buffer_size" in cfg.agent.sb3 else {}
        model, _ = build_plan_model(plan, env, device="cpu", **small_replay)
        controller = attach_controller(model, plan.agent, plan.sparsity, int(cfg.agent.total_timesteps), int(cfg.seed))
    finally:
        env.close()
    return MemberStart(model, controller)
