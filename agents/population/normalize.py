"""Per-member observation and reward normalisation: SB3's ``VecNormalize`` for K members side by side.

Member ``k`` gets exactly what SB3's ``VecNormalize(venv)`` with its default arguments (the SB3 path's wrapper,
``experiment/sb3.py``; clip, ``gamma`` and epsilon read from SB3's signatures) gives one env
(``stable_baselines3/common/vec_env/vec_normalize.py``, ``common/running_mean_std.py``): at a reset and after every
step the observation statistics take the raw observations first (``RunningMeanStd.update`` of a batch of one, its
float64 operations element by element), then the observations are normalised ``clip((o − μ)/√(σ² + ε))`` to float32;
the discounted return ``R ← γR + r`` updates the return statistics and the reward is scaled
``clip(r/√(σ²_R + ε))`` to float32; the terminal observations are normalised with the updated statistics; ``R`` is
reset where an episode ended. Evaluation normalises with the current statistics, frozen (SB3's ``EvalCallback``
syncs them into an eval ``VecNormalize(training=False, norm_reward=False)``). Each member's arithmetic is its own
(docs/design.md decision 41): a member alone normalises as in any population.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import numpy as np
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

STATE_FIELDS = ("obs_mean", "obs_var", "obs_count", "ret_mean", "ret_var", "ret_count", "returns")


def _default(function: object, name: str) -> float:
    return float(inspect.signature(function).parameters[name].default)


def _update(mean: np.ndarray, var: np.ndarray, count: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, ...]:
    """``RunningMeanStd.update`` of each member's batch of one (``batch[k]``), in SB3's operations and order: the batch
    mean is the sample itself (``np.mean`` of one row, its dtype), the batch variance 0, the batch count 1."""
    batch_mean, batch_var, batch_count = batch, np.zeros_like(batch), 1
    delta = batch_mean - mean
    tot_count = count + batch_count
    new_mean = mean + delta * batch_count / tot_count
    m_a = var * count
    m_b = batch_var * batch_count
    m_2 = m_a + m_b + np.square(delta) * count * batch_count / (count + batch_count)
    new_var = m_2 / (count + batch_count)
    return new_mean, new_var, batch_count + count


class MemberNormalize:
    """SB3's ``VecNormalize`` statistics of ``k`` members (observations ``[K, obs_dim]``), in float64 NumPy."""

    def __init__(self, k: int, obs_dim: int) -> None:
        self.clip_obs, self.clip_reward = _default(VecNormalize, "clip_obs"), _default(VecNormalize, "clip_reward")
        self.gamma, self.epsilon = _default(VecNormalize, "gamma"), _default(VecNormalize, "epsilon")
        count = _default(RunningMeanStd, "epsilon")  # RunningMeanStd's initial count
        self.obs_mean, self.obs_var = np.zeros((k, obs_dim)), np.ones((k, obs_dim))
        self.obs_count = np.full((k, 1), count)
        self.ret_mean, self.ret_var, self.ret_count = np.zeros(k), np.ones(k), np.full(k, count)
        self.returns = np.zeros(k)

    def reset(self, obs: np.ndarray) -> np.ndarray:
        """``VecNormalize.reset``: returns zeroed, statistics updated with the first observations; normalised."""
        self.returns = np.zeros_like(self.returns)
        self.obs_mean, self.obs_var, self.obs_count = _update(self.obs_mean, self.obs_var, self.obs_count, obs)
        return self.normalize_obs(obs)

    def step(
        self, obs: np.ndarray, rewards: np.ndarray, dones: np.ndarray, terminal_obs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``VecNormalize.step_wait`` on raw ``obs`` ``[K, obs]``, ``rewards`` (float32) and ``dones`` ``[K]``:
        normalised observations, rewards and terminal observations (``terminal_obs``: the raw ``real_next_obs``; its
        normalised rows hold only where ``dones``)."""
        self.obs_mean, self.obs_var, self.obs_count = _update(self.obs_mean, self.obs_var, self.obs_count, obs)
        normalized = self.normalize_obs(obs)
        self.returns = self.returns * self.gamma + rewards
        self.ret_mean, self.ret_var, self.ret_count = _update(self.ret_mean, self.ret_var, self.ret_count, self.returns)
        scaled = np.clip(rewards / np.sqrt(self.ret_var + self.epsilon), -self.clip_reward, self.clip_reward)
        dones = np.asarray(dones, dtype=bool)
        terminal = self.normalize_obs(terminal_obs) if dones.any() else normalized  # read only where an episode ended
        self.returns[dones] = 0
        return normalized, scaled.astype(np.float32), terminal

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Observations ``[K, obs]`` or ``[K, B, obs]`` normalised with each member's statistics (not updated)."""
        mean, var = self.obs_mean, self.obs_var
        if obs.ndim == 3:
            mean, var = mean[:, None], var[:, None]
        return np.clip((obs - mean) / np.sqrt(var + self.epsilon), -self.clip_obs, self.clip_obs).astype(np.float32)

    def member(self, k: int) -> dict[str, np.ndarray | float]:
        """Member ``k``'s statistics as SB3's ``VecNormalize`` of one env holds them (``obs_rms``/``ret_rms``:
        mean, var, count; ``returns`` ``[1]``)."""
        return {
            "obs_rms/mean": self.obs_mean[k].copy(), "obs_rms/var": self.obs_var[k].copy(),
            "obs_rms/count": float(self.obs_count[k, 0]), "ret_rms/mean": np.float64(self.ret_mean[k]),
            "ret_rms/var": np.float64(self.ret_var[k]), "ret_rms/count": float(self.ret_count[k]),
            "returns": self.returns[k : k + 1].copy(),
        }  # fmt: skip

    def to_vec_normalize(self, k: int, venv: VecNormalize) -> None:
        """Put member ``k``'s statistics into SB3's ``venv`` (one env; export, tests)."""
        stats = self.member(k)
        venv.obs_rms.mean, venv.obs_rms.var = stats["obs_rms/mean"], stats["obs_rms/var"]
        venv.obs_rms.count = stats["obs_rms/count"]
        venv.ret_rms.mean, venv.ret_rms.var = stats["ret_rms/mean"], stats["ret_rms/var"]
        venv.ret_rms.count = stats["ret_rms/count"]
        venv.returns = stats["returns"]

    def state(self) -> dict[str, torch.Tensor]:
        """Float64 tensors for the population checkpoint (``torch.load(weights_only=True)``)."""
        return {field: torch.from_numpy(np.array(getattr(self, field))) for field in STATE_FIELDS}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for field in STATE_FIELDS:
            setattr(self, field, state[field].numpy().copy())
