"""The SB3 path's env snapshots (envs/state.py) continue a MuJoCo env bit for bit after a JSON round trip."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.state import restore_vec_env_states, vec_env_states


def _venv(env_id: str) -> DummyVecEnv:
    return DummyVecEnv([lambda: Monitor(gym.make(env_id))])


@pytest.mark.parametrize("env_id", ["Ant-v5", "Walker2d-v5"])
def test_restored_mujoco_env_continues_bit_for_bit(env_id: str) -> None:
    """Ant failed before MuJoCo's integration state and kinematics were saved: with qpos/qvel alone its reward
    after a restore differed (Ant reads body xpos before stepping)."""
    rng = np.random.default_rng(0)
    original = _venv(env_id)
    original.seed(3)
    original.reset()
    space = original.action_space
    for _ in range(30):
        original.step(rng.uniform(space.low, space.high, (1, *space.shape)).astype(np.float32))
    states = json.loads(json.dumps(vec_env_states(original)))
    copy = _venv(env_id)
    copy.seed(3)
    restore_vec_env_states(copy, states)
    for _ in range(50):
        action = rng.uniform(space.low, space.high, (1, *space.shape)).astype(np.float32)
        obs_a, rew_a, done_a, _ = original.step(action)
        obs_b, rew_b, done_b, _ = copy.step(action)
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(rew_a, rew_b)
        np.testing.assert_array_equal(done_a, done_b)
