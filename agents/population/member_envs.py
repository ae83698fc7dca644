"""The members' environments: one single-env SB3 ``VecEnv`` per member, seeded as the SB3 path seeds it.

Member ``k`` trains on ``make_vec_env(spec, 1, seed_k)`` and evaluates on ``make_vec_env(spec, 1, seed_k + 10000)``,
exactly the SB3 path's envs (Monitor, time limits, auto-reset with ``terminal_observation``). With ``workers > 0`` the
members' envs are split over that many worker processes stepped in parallel (each owns a contiguous block of members);
otherwise they are stepped in this process.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs import EnvSpec, make_vec_env
from envs.state import restore_vec_env_states, vec_env_states


@dataclass
class StepResult:
    """One population step: arrays over members."""

    next_obs: np.ndarray  # [K, obs]: the observation the next action acts on (after auto-reset)
    real_next_obs: np.ndarray  # [K, obs]: the true next observation (terminal observation at episode ends)
    rewards: np.ndarray  # [K]
    dones: np.ndarray  # [K] episode ended (terminated or truncated)
    terminated: np.ndarray  # [K] ended and not by a time limit (the replay's done flag)
    episodes: list[dict | None]  # Monitor's {"r", "l", "t"} where an episode ended


class _LocalEnvs:
    """A block of members' envs in this process."""

    def __init__(self, spec: EnvSpec, seeds: Sequence[int]) -> None:
        self.envs = [make_vec_env(spec, 1, seed) for seed in seeds]

    def reset(self) -> np.ndarray:
        return np.concatenate([env.reset().reshape(1, -1) for env in self.envs]).astype(np.float32)

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple:
        k = len(self.envs)
        obs_dim = int(np.prod(self.envs[0].observation_space.shape))
        next_obs = np.zeros((k, obs_dim), dtype=np.float32)
        real_next = np.zeros((k, obs_dim), dtype=np.float32)
        rewards, dones, terminated = np.zeros(k, np.float32), np.zeros(k, bool), np.zeros(k, bool)
        episodes: list[dict | None] = [None] * k
        for i, env in enumerate(self.envs):
            if not active[i]:
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
        return next_obs, real_next, rewards, dones, terminated, episodes

    def states(self) -> list:
        return [vec_env_states(env) for env in self.envs]

    def restore(self, states: list, continue_streams: bool) -> None:
        for env, state in zip(self.envs, states):
            restore_vec_env_states(env, state)
            if continue_streams:
                env._reset_seeds()  # seeded at its first reset already: continue its stream, do not re-seed

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(connection: Any, spec: EnvSpec, seeds: list[int]) -> None:
    """A worker process: serves ``(method, args)`` calls on its block of envs until ``close``."""
    envs = _LocalEnvs(spec, seeds)
    while True:
        method, args = connection.recv()
        if method == "close":
            envs.close()
            connection.close()
            return
        connection.send(getattr(envs, method)(*args))


class MemberEnvs:
    """K members' envs stepped together, in this process (``workers=0``) or over worker processes."""

    def __init__(self, spec: EnvSpec, seeds: Sequence[int], workers: int = 0) -> None:
        self.spec, self.k = spec, len(seeds)
        probe = make_vec_env(spec, 1, int(seeds[0]))
        self.observation_space, self.action_space = probe.observation_space, probe.action_space
        probe.close()
        workers = min(workers, self.k)
        if workers <= 0:
            self._local: _LocalEnvs | None = _LocalEnvs(spec, seeds)
            self._blocks: list[slice] = [slice(0, self.k)]
            self._connections: list[Any] = []
            return
        self._local = None
        bounds = np.linspace(0, self.k, workers + 1).round().astype(int)
        self._blocks = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        context = mp.get_context("spawn")  # no fork of a process that may hold a CUDA context
        self._connections, self._processes = [], []
        for block in self._blocks:
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, spec, list(seeds[block])), daemon=True)
            process.start()
            child.close()
            self._connections.append(parent)
            self._processes.append(process)

    def __len__(self) -> int:
        return self.k

    def _call(self, method: str, per_block_args: list[tuple]) -> list:
        if self._local is not None:
            return [getattr(self._local, method)(*per_block_args[0])]
        for connection, args in zip(self._connections, per_block_args):
            connection.send((method, args))
        return [connection.recv() for connection in self._connections]

    def reset(self) -> np.ndarray:
        return np.concatenate(self._call("reset", [() for _ in self._blocks]))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Step member ``k`` with ``actions[k]`` (env units); members not ``active`` are not stepped."""
        active = np.ones(self.k, bool) if active is None else active
        parts = self._call("step", [(actions[b], active[b]) for b in self._blocks])
        arrays = [np.concatenate([part[i] for part in parts]) for i in range(5)]
        episodes = [episode for part in parts for episode in part[5]]
        return StepResult(*arrays, episodes)

    def states(self) -> list:
        """Every member env's state (:func:`envs.state.vec_env_states`), JSON-serialisable."""
        return [state for part in self._call("states", [() for _ in self._blocks]) for state in part]

    def restore(self, states: list, continue_streams: bool) -> None:
        """Restore :meth:`states`; ``continue_streams``: the envs had been reset before (do not re-seed them)."""
        self._call("restore", [(states[b], continue_streams) for b in self._blocks])

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
            return
        for connection, process in zip(self._connections, self._processes):
            try:
                connection.send(("close", ()))
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=5)
        self._connections = []
