"""The members' environments: one single-env SB3 ``VecEnv`` per member, seeded as the SB3 path seeds it.

Member ``k`` trains on ``make_vec_env(spec, 1, seed_k)`` and evaluates on ``make_vec_env(spec, 1, seed_k + 10000)``,
exactly the SB3 path's envs (Monitor, time limits, auto-reset with ``terminal_observation``). They are stepped in one
process; at our sizes the env step is a small share of a population step (benchmarks/population.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from envs import EnvSpec, make_vec_env


@dataclass
class StepResult:
    """One population step: arrays over members."""

    next_obs: np.ndarray  # [K, obs]: the observation the next action acts on (after auto-reset)
    real_next_obs: np.ndarray  # [K, obs]: the true next observation (terminal observation at episode ends)
    rewards: np.ndarray  # [K]
    dones: np.ndarray  # [K] episode ended (terminated or truncated)
    terminated: np.ndarray  # [K] ended and not by a time limit (the replay's done flag)
    episodes: list[dict | None]  # Monitor's {"r", "l", "t"} where an episode ended


class MemberEnvs:
    """K single-env ``VecEnv``s stepped together."""

    def __init__(self, spec: EnvSpec, seeds: Sequence[int]) -> None:
        self.envs: list[VecEnv] = [make_vec_env(spec, 1, seed) for seed in seeds]
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self) -> np.ndarray:
        return np.concatenate([env.reset() for env in self.envs]).astype(np.float32)

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step member ``k`` with ``actions[k]`` (env units); members not ``active`` are not stepped."""
        k = len(self.envs)
        obs_dim = int(np.prod(self.observation_space.shape))
        next_obs = np.zeros((k, obs_dim), dtype=np.float32)
        real_next = np.zeros((k, obs_dim), dtype=np.float32)
        rewards, dones, terminated = np.zeros(k, np.float32), np.zeros(k, bool), np.zeros(k, bool)
        episodes: list[dict | None] = [None] * k
        for i, env in enumerate(self.envs):
            if active is not None and not active[i]:
                continue
            obs, reward, done, infos = env.step(actions[i : i + 1])
            next_obs[i] = obs[0].reshape(-1)
            real_next[i] = next_obs[i]
            rewards[i], dones[i] = reward[0], done[0]
            if done[0]:
                info = infos[0]
                if info.get("terminal_observation") is not None:
                    real_next[i] = np.asarray(info["terminal_observation"]).reshape(-1)
                terminated[i] = not info.get("TimeLimit.truncated", False)
                episodes[i] = info.get("episode")
        return StepResult(next_obs, real_next, rewards, dones, terminated, episodes)

    def close(self) -> None:
        for env in self.envs:
            env.close()
