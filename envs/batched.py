"""Many copies of one env stepped as one batch in this process, with SB3's ``DummyVecEnv`` + ``Monitor`` semantics.

No ``VecEnv``, no ``Monitor`` object, no pipes: a batch keeps each env's episode return and length itself (Monitor's
``{"r", "l", "t"}`` where an episode ends, ``r`` summed in float64 in step order and rounded as Monitor rounds it),
stores rewards as ``DummyVecEnv``'s float32 buffer does, and resets an env as soon as its episode ends, handing out the
terminal observation separately. Two backends (:func:`make_batched_envs` picks one):

- :class:`ClassicEnvs`: gymnasium's classic control (CartPole, Acrobot, MountainCar, Pendulum) as array code over the
  batch (:mod:`envs.batched_classic`), the time limit from the env's gymnasium registration; resets by gymnasium's
  own unwrapped envs.
- :class:`GymEnvs`: any other single env of :func:`envs.families.make_single_env` (MuJoCo, dm-control), stepped one
  by one in this process, over ``threads`` threads if asked (MuJoCo releases the GIL inside ``mj_step``).

Seeding is SB3's: env stream ``s`` is seeded with ``seeds[s]`` at its first reset and continues after that. A batch
may hold ``copies`` envs per stream (a member's evaluation episodes run side by side); they then share the stream's
generator and are reset one after the other, so copy ``j`` starts where episode ``j`` of one env run episode after
episode would start. That needs envs whose ``step`` draws no randomness: classic control and gymnasium's MuJoCo envs
(:func:`copies_supported`). :meth:`BatchedEnvs.states` captures everything needed to continue bit for bit (MuJoCo:
``mj_getState`` with ``mjSTATE_INTEGRATION``, which includes the solver's warm start; qpos/qvel alone drift by 1e-12
on Ant and Walker2d), as JSON data.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from envs.batched_classic import CLASSIC_DYNAMICS, ClassicDynamics
from envs.families import make_single_env
from envs.spec import EnvSpec
from envs.state import env_state, rng_state, set_env_state, set_rng_state
from envs.vec import FRAME_STACK

STATE_FORMAT = "batched_envs/1"  # tag of BatchedEnvs.states(); older population checkpoints held SB3 VecEnv states


@dataclass
class BatchStep:
    """One step of a batch: arrays over its envs."""

    next_obs: np.ndarray  # [n, obs] float32: what the next action acts on (the reset observation where an episode ended)
    real_next_obs: np.ndarray  # [n, obs] float32: the true next observation (the terminal one where an episode ended)
    rewards: np.ndarray  # [n] float32 (DummyVecEnv's buffer)
    dones: np.ndarray  # [n] episode ended (terminated or truncated)
    terminated: np.ndarray  # [n] ended and not by the time limit
    episodes: list[dict | None]  # Monitor's {"r", "l", "t"} where an episode ended


def is_mujoco(spec: EnvSpec) -> bool:
    """A gymnasium MuJoCo env (``family: gym`` with a ``gymnasium.envs.mujoco`` entry point)."""
    return spec.family == "gym" and str(gym.spec(spec.id).entry_point).startswith("gymnasium.envs.mujoco")


def _classic_dynamics(spec: EnvSpec, env: gym.Env | None = None) -> ClassicDynamics | None:
    """The batched dynamics of a classic-control spec with gymnasium's default settings, else ``None``."""
    if spec.family != "gym" or spec.kwargs or spec.id not in CLASSIC_DYNAMICS.names():
        return None
    dynamics = CLASSIC_DYNAMICS.get(spec.id)((env or make_single_env(spec)).unwrapped)
    return dynamics if dynamics.supported() is None else None


def copies_supported(spec: EnvSpec) -> bool:
    """Whether several envs may share one seeded stream (their steps draw no randomness): classic control, MuJoCo."""
    return _classic_dynamics(spec) is not None or is_mujoco(spec)


class BatchedEnvs:
    """``len(seeds) × copies`` envs; env ``i`` is copy ``i % copies`` of stream ``i // copies``."""

    def __init__(self, spec: EnvSpec, seeds: list[int], copies: int, obs_dim: int) -> None:
        self.spec, self.seeds, self.copies = spec, [int(s) for s in seeds], int(copies)
        self.n, self.obs_dim = len(self.seeds) * self.copies, obs_dim
        self.seeded = [False] * len(self.seeds)
        self.returns = np.zeros(self.n)  # float64, summed in step order (Monitor: sum of float rewards)
        self.lengths = np.zeros(self.n, dtype=np.int64)
        self.t_start = time.time()

    # ----------------------------------------------------------------- backend hooks
    def _reset_env(self, i: int, seed: int | None) -> np.ndarray:
        """Reset env ``i`` (``seed``: its stream's first reset) and return its observation."""
        raise NotImplementedError

    def _share_stream(self, stream: int) -> None:
        """Make every copy of ``stream`` draw from its first copy's generator."""
        raise NotImplementedError

    def _step(self, actions: np.ndarray, idx: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step envs ``idx`` (all: ``slice(None)``) with ``actions[idx]``: (float32 observations ``[m, obs]``, float64
        rewards, terminated, truncated), fresh arrays."""
        raise NotImplementedError

    def _env_state(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def _set_env_state(self, i: int, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _stream_generator(self, stream: int) -> np.random.Generator:
        raise NotImplementedError

    # ----------------------------------------------------------------- the batch
    def reset_envs(self, idx: np.ndarray) -> np.ndarray:
        """Reset envs ``idx`` in that order (a stream's copies take its draws one after the other); observations."""
        out = np.empty((len(idx), self.obs_dim), dtype=np.float32)
        for row, i in enumerate(np.asarray(idx, dtype=np.int64).tolist()):
            stream = i // self.copies
            seed = None if self.seeded[stream] else self.seeds[stream]
            out[row] = np.asarray(self._reset_env(i, seed)).reshape(-1)
            if seed is not None:
                self.seeded[stream] = True
                self._share_stream(stream)
        self.returns[idx] = 0.0
        self.lengths[idx] = 0
        return out

    def reset(self) -> np.ndarray:
        """Reset every env (``DummyVecEnv.reset``); observations ``[n, obs]``."""
        return self.reset_envs(np.arange(self.n))

    def step(self, actions: np.ndarray, active: np.ndarray | None = None, autoreset: bool = True) -> BatchStep:
        """Step env ``i`` with ``actions[i]`` where ``active`` (default: all); ended episodes reset if ``autoreset``.

        Envs not stepped report zeros. Where no episode ended, ``real_next_obs`` may be ``next_obs`` itself.
        """
        if active is None or bool(np.all(active)):  # the training loop's case: whole arrays, no gathers
            idx: slice | np.ndarray = slice(None)
            next_obs, step_rewards, terminated, truncated = self._step(actions, idx)
            rewards = step_rewards.astype(np.float32)
            dones = terminated | truncated
        else:
            idx = np.flatnonzero(active)
            next_obs = np.zeros((self.n, self.obs_dim), dtype=np.float32)
            rewards = np.zeros(self.n, dtype=np.float32)
            dones, terminated = np.zeros(self.n, dtype=bool), np.zeros(self.n, dtype=bool)
            if len(idx) == 0:
                return BatchStep(next_obs, next_obs, rewards, dones, terminated, [None] * self.n)
            next_obs[idx], step_rewards, terminated[idx], truncated = self._step(actions, idx)
            rewards[idx] = step_rewards
            dones[idx] = terminated[idx] | truncated
        self.returns[idx] += step_rewards
        self.lengths[idx] += 1
        episodes: list[dict | None] = [None] * self.n
        real_next_obs = next_obs
        ended = np.flatnonzero(dones)
        if len(ended):
            wall = round(time.time() - self.t_start, 6)
            for i in ended.tolist():
                episodes[i] = {"r": round(float(self.returns[i]), 6), "l": int(self.lengths[i]), "t": wall}
            if autoreset:
                real_next_obs = next_obs.copy()
                next_obs[ended] = self.reset_envs(ended)
        return BatchStep(next_obs, real_next_obs, rewards, np.asarray(dones, dtype=bool), terminated, episodes)

    def states(self) -> dict[str, Any]:
        """Every env's state, its episode so far and each stream's generator, as JSON data."""
        return {
            "format": STATE_FORMAT,
            "seeded": list(self.seeded),
            "streams": [rng_state(self._stream_generator(s)) for s in range(len(self.seeds))],
            "envs": [
                {**self._env_state(i), "return": float(self.returns[i]), "length": int(self.lengths[i])} for i in range(self.n)
            ],
        }

    def restore(self, states: dict[str, Any]) -> None:
        """Continue exactly where :meth:`states` was taken."""
        if not isinstance(states, dict) or states.get("format") != STATE_FORMAT or len(states["envs"]) != self.n:
            raise ValueError(
                f"the checkpoint's env states are not {STATE_FORMAT} states of {self.n} envs (written by an older "
                "population engine?); resume with the version that wrote it or start the runs again"
            )
        for i, state in enumerate(states["envs"]):
            self._set_env_state(i, state)
            self.returns[i], self.lengths[i] = state["return"], state["length"]
        self.seeded = [bool(s) for s in states["seeded"]]
        for stream, saved in enumerate(states["streams"]):
            self._share_stream(stream)
            set_rng_state(self._stream_generator(stream), saved)

    def close(self) -> None:
        """Release the envs."""


class ClassicEnvs(BatchedEnvs):
    """Classic control as array code (:mod:`envs.batched_classic`); gymnasium's unwrapped envs do the resets."""

    def __init__(self, spec: EnvSpec, seeds: list[int], copies: int = 1) -> None:
        self.gym_envs = [make_single_env(spec).unwrapped for _ in range(len(seeds) * copies)]
        dynamics = _classic_dynamics(spec, self.gym_envs[0])
        if dynamics is None:
            raise ValueError(f"env '{spec.name}' has no batched classic-control dynamics with these settings")
        self.dynamics = dynamics
        super().__init__(spec, seeds, copies, int(np.prod(self.gym_envs[0].observation_space.shape)))
        self.state = np.zeros((self.n, dynamics.state_dim))
        self.elapsed = np.zeros(self.n, dtype=np.int64)
        self.max_episode_steps = gym.spec(spec.id).max_episode_steps  # gym.make's TimeLimit

    def _reset_env(self, i: int, seed: int | None) -> np.ndarray:
        obs, _ = self.gym_envs[i].reset(seed=seed)
        self.state[i] = np.asarray(self.gym_envs[i].state, dtype=np.float64)
        self.elapsed[i] = 0
        return obs

    def _share_stream(self, stream: int) -> None:
        first = stream * self.copies
        for i in range(first + 1, first + self.copies):
            self.gym_envs[i].np_random = self.gym_envs[first].np_random

    def _stream_generator(self, stream: int) -> np.random.Generator:
        return self.gym_envs[stream * self.copies].np_random

    def _step(self, actions, idx):
        state, obs, rewards, terminated = self.dynamics.step(self.state[idx], np.asarray(actions)[idx])
        self.state[idx] = state
        self.elapsed[idx] += 1
        return obs, rewards, terminated, self.elapsed[idx] >= self.max_episode_steps

    def _env_state(self, i: int) -> dict[str, Any]:
        return {"state": self.state[i].tolist(), "elapsed_steps": int(self.elapsed[i])}

    def _set_env_state(self, i: int, state: dict[str, Any]) -> None:
        self.state[i] = state["state"]
        self.elapsed[i] = state["elapsed_steps"]


class GymEnvs(BatchedEnvs):
    """Single gymnasium envs (their family's wrappers, time limit included) stepped in this process, optionally threaded."""

    def __init__(self, spec: EnvSpec, seeds: list[int], copies: int = 1, threads: int = 0) -> None:
        self.mujoco = is_mujoco(spec)
        if copies > 1 and not self.mujoco:
            raise ValueError(f"env '{spec.name}': only classic-control and MuJoCo envs run several episodes per stream")
        self.envs = [make_single_env(spec) for _ in range(len(seeds) * copies)]
        super().__init__(spec, seeds, copies, int(np.prod(self.envs[0].observation_space.shape)))
        self._flat = len(self.envs[0].observation_space.shape) == 1
        self.threads = min(int(threads), self.n)
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def _reset_env(self, i: int, seed: int | None) -> np.ndarray:
        return self.envs[i].reset(seed=seed)[0]

    def _share_stream(self, stream: int) -> None:
        first = stream * self.copies
        for i in range(first + 1, first + self.copies):
            self.envs[i].unwrapped.np_random = self.envs[first].unwrapped.np_random

    def _stream_generator(self, stream: int) -> np.random.Generator:
        return self.envs[stream * self.copies].unwrapped.np_random

    def _step(self, actions, idx):
        members = list(range(self.n)) if isinstance(idx, slice) else idx.tolist()
        m = len(members)
        obs = np.empty((m, self.obs_dim), dtype=np.float32)
        rewards, terminated, truncated = np.empty(m), np.empty(m, dtype=bool), np.empty(m, dtype=bool)

        envs = self.envs
        flat = obs.reshape(m, *self.envs[0].observation_space.shape) if not self._flat else obs

        def run(rows: range) -> None:
            for row in rows:
                i = members[row]
                flat[row], rewards[row], terminated[row], truncated[row], _ = envs[i].step(actions[i])

        if self._pool is None or m < 2:
            run(range(m))
        else:
            bounds = np.linspace(0, m, self.threads + 1).astype(int).tolist()
            list(self._pool.map(run, [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
        return obs, rewards, terminated, truncated

    def _env_state(self, i: int) -> dict[str, Any]:
        return env_state(self.envs[i])  # MuJoCo's integration state and kinematics included (envs.state)

    def _set_env_state(self, i: int, state: dict[str, Any]) -> None:
        env = self.envs[i]
        env.reset()  # the wrappers' order checks want a reset first
        set_env_state(env, state)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for env in self.envs:
            env.close()


def make_batched_envs(spec: EnvSpec, seeds: list[int], copies: int = 1, threads: int = 0) -> BatchedEnvs:
    """Classic control as array code where gymnasium's settings are the defaults, else single envs in this process.

    ``threads`` (> 1) steps :class:`GymEnvs` over that many threads; classic control ignores it (one array step).
    """
    if spec.family in FRAME_STACK:
        raise ValueError(f"env '{spec.name}': family '{spec.family}' stacks frames in its VecEnv; use the SB3 path")
    if _classic_dynamics(spec) is not None:
        return ClassicEnvs(spec, seeds, copies)
    return GymEnvs(spec, seeds, copies, threads)
