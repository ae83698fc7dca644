"""Warnings about a run that is valid but will not do what a newcomer expects, said before it starts.

One line each: what will happen, and the key to change. A budget shorter than the warm-up trains nothing; a
budget shorter than ``agent.eval_freq`` gets no periodic evaluation (the run then evaluates once, at the end,
so even a smoke test leaves one evaluation, one ``progress.csv`` row and a score).
"""

from __future__ import annotations

import math
from typing import Any


def env_steps_run(agent: Any) -> int:
    """Env steps a run of ``agent`` (its config node) takes: PPO finishes its last rollout of ``n_steps`` per env."""
    total, n_envs = int(agent.total_timesteps), int(agent.n_envs)
    n_steps = agent.sb3.get("n_steps")  # on-policy rollout length (SB3's PPO/A2C)
    if n_steps is None:
        return total
    rollout = int(n_steps) * n_envs
    return math.ceil(total / rollout) * rollout


def budget_warnings(cfg: Any) -> list[str]:
    """The one-line warnings for ``cfg`` (a composed run config): trains nothing, never evaluates."""
    agent = cfg.agent
    total, n_envs = int(agent.total_timesteps), int(agent.n_envs)
    warnings = []
    learning_starts = agent.sb3.get("learning_starts")  # off-policy warm-up (SB3's SAC/DQN)
    if learning_starts is not None and total <= int(learning_starts):
        warnings.append(
            f"agent.total_timesteps={total} <= agent.sb3.learning_starts={learning_starts}: no gradient step, the "
            "network trains nothing; lower agent.sb3.learning_starts"
        )
    calls = env_steps_run(agent) // n_envs  # callback calls: one per vectorised step
    if calls < max(int(agent.eval_freq) // n_envs, 1):
        warnings.append(
            f"agent.total_timesteps={total} < agent.eval_freq={agent.eval_freq}: no periodic evaluation, only one at "
            "the end of training; lower agent.eval_freq"
        )
    return warnings
