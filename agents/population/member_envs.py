"""The members' environments: one batch in the main process (:mod:`envs.batched`), seeded as the SB3 path seeds them.

Member ``k`` trains on an env seeded ``seed_k`` and evaluates on one seeded ``seed_k + 10000``, with the SB3 path's
semantics (``make_vec_env``: ``Monitor`` episode records, time limits, auto-reset with the terminal observation) but no
``VecEnv``, wrapper stack or worker process on the hot path: classic control is array code over the members, other
envs (MuJoCo, dm-control) are stepped one after the other in this process, over ``workers`` threads if asked.

Evaluation (:meth:`MemberEnvs.evaluate`) runs all of a member's episodes side by side where the env allows it
(``envs.batched.copies_supported``: classic control and MuJoCo, whose steps draw no randomness): ``K × episodes``
envs, one policy call per step, and the copies of a member reset from its evaluation stream in episode order, so each
member's returns are those of its episodes run one after another on one env (SB3's ``evaluate_policy``). Other envs
run their episodes one after another, all members at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from envs import EnvSpec, make_single_env
from envs.batched import BatchStep, copies_supported, make_batched_envs

StepResult = BatchStep  # the loop's name for one population step: arrays over members

Policy = Callable[[np.ndarray], np.ndarray]  # observations [K, obs] or [K, B, obs] -> actions [K, ·] or [K, B, ·]


class MemberEnvs:
    """K members' envs stepped together in this process; ``episodes > 1``: evaluation envs, ``episodes`` per member."""

    def __init__(self, spec: EnvSpec, seeds: Sequence[int], workers: int = 0, episodes: int = 1) -> None:
        self.spec, self.k = spec, len(seeds)
        probe = make_single_env(spec)
        probe.action_space.seed(int(seeds[0]))  # as the first member's SB3 env (make_vec_env seeds its action space)
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        self.episodes = int(episodes)
        self.batched_episodes = self.episodes > 1 and copies_supported(spec)
        copies = self.episodes if self.batched_episodes else 1
        self.envs = make_batched_envs(spec, [int(s) for s in seeds], copies, workers)

    def __len__(self) -> int:
        return self.k

    def reset(self) -> np.ndarray:
        """Reset every member's env (seeded at its first reset, continuing its stream after); observations ``[K, obs]``."""
        return self.envs.reset()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step member ``k`` with ``actions[k]`` (env units); members not ``active`` are not stepped."""
        return self.envs.step(actions, active)

    def evaluate(self, policy: Policy, members: np.ndarray) -> tuple[list[list[float]], list[list[int]]]:
        """``episodes`` episodes of every member in ``members`` (bool ``[K]``) acting by ``policy``: returns, lengths.

        Each member's episodes are those SB3's ``evaluate_policy`` runs on its evaluation env, episode after episode
        (Monitor's returns); the env's stream then stands where that would leave it.
        """
        if self.batched_episodes:
            return self._evaluate_batched(policy, np.asarray(members, dtype=bool))
        return self._evaluate_in_turn(policy, np.asarray(members, dtype=bool))

    def _evaluate_batched(self, policy: Policy, members: np.ndarray) -> tuple[list[list[float]], list[list[int]]]:
        """All episodes side by side: ``K × episodes`` envs, one ``policy`` call per step on ``[K, episodes, obs]``."""
        k, e = self.k, self.episodes
        running = np.repeat(members, e)
        idx = np.flatnonzero(running)
        obs = np.zeros((k * e, self.envs.obs_dim), dtype=np.float32)
        obs[idx] = self.envs.reset_envs(idx)  # copy j of a member takes its stream's j-th reset draw
        returns: list[list[float]] = [[0.0] * e if members[m] else [] for m in range(k)]
        lengths: list[list[int]] = [[0] * e if members[m] else [] for m in range(k)]
        while running.any():
            actions = np.asarray(policy(obs.reshape(k, e, -1)))
            result = self.envs.step(actions.reshape(k * e, *actions.shape[2:]), active=running, autoreset=False)
            obs = np.where(running[:, None], result.next_obs, obs)
            for i in np.flatnonzero(result.dones).tolist():
                returns[i // e][i % e] = float(result.episodes[i]["r"])
                lengths[i // e][i % e] = int(result.episodes[i]["l"])
                running[i] = False
        self.envs.reset_envs(np.flatnonzero(members) * e)  # the reset that follows the last episode of a single env
        return returns, lengths

    def _evaluate_in_turn(self, policy: Policy, members: np.ndarray) -> tuple[list[list[float]], list[list[int]]]:
        """Episode after episode on each member's env, all members at once (one ``policy`` call per step on ``[K, obs]``)."""
        obs = self.envs.reset()
        remaining = np.where(members, self.episodes, 0)
        returns: list[list[float]] = [[] for _ in range(self.k)]
        lengths: list[list[int]] = [[] for _ in range(self.k)]
        while remaining.any():
            result = self.envs.step(policy(obs), active=remaining > 0)
            obs = np.where((remaining > 0)[:, None], result.next_obs, obs)
            for i in np.flatnonzero(result.dones & (remaining > 0)).tolist():
                returns[i].append(float(result.episodes[i]["r"]))
                lengths[i].append(int(result.episodes[i]["l"]))
                remaining[i] -= 1
        return returns, lengths

    def states(self) -> dict[str, Any]:
        """Every env's state (:meth:`envs.batched.BatchedEnvs.states`), JSON-serialisable."""
        return self.envs.states()

    def restore(self, states: dict[str, Any], continue_streams: bool = True) -> None:
        """Restore :meth:`states` (which record themselves which streams were seeded; ``continue_streams`` is implied)."""
        self.envs.restore(states)

    def close(self) -> None:
        self.envs.close()
