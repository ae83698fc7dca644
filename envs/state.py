"""Capture and restore the internal state of gymnasium envs inside a VecEnv, as plain JSON data.

Supported: MuJoCo envs (qpos, qvel) and classic-control envs (their ``state``), plus every env's RNG and
time-limit counter. Other envs (ALE, dm-control, MinAtar) report ``exact: false``: a resumed run restarts
their current episodes. Nothing here unpickles anything.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

CLASSIC_EXTRA_ATTRIBUTES = ("steps_beyond_terminated", "last_u")


def innermost_vec_env(venv: VecEnv) -> VecEnv:
    """The VecEnv under all VecEnv wrappers (VecNormalize, VecFrameStack)."""
    while isinstance(venv, VecEnvWrapper):
        venv = venv.venv
    return venv


def _wrappers(env: gym.Env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "ndarray" in value:
        return np.asarray(value["ndarray"], dtype=value["dtype"])
    return value


def env_state(env: gym.Env) -> dict[str, Any]:
    """The env's RNG, time-limit counter and physical state (``exact`` says whether that is complete)."""
    unwrapped = env.unwrapped
    state: dict[str, Any] = {"np_random": unwrapped.np_random.bit_generator.state, "exact": True}
    for wrapper in _wrappers(env):
        if isinstance(wrapper, TimeLimit):
            state["elapsed_steps"] = wrapper._elapsed_steps
    if hasattr(unwrapped, "set_state") and hasattr(unwrapped, "data"):  # gymnasium MuJoCo
        state["qpos"] = _jsonable(unwrapped.data.qpos.copy())
        state["qvel"] = _jsonable(unwrapped.data.qvel.copy())
    elif hasattr(unwrapped, "state"):  # gymnasium classic control
        state["state"] = _jsonable(np.asarray(unwrapped.state))
        for name in CLASSIC_EXTRA_ATTRIBUTES:
            if hasattr(unwrapped, name):
                state[name] = _jsonable(getattr(unwrapped, name))
    else:
        state["exact"] = False
    return state


def set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore :func:`env_state` (call after ``reset()``, which the env's order checks require)."""
    unwrapped = env.unwrapped
    unwrapped.np_random.bit_generator.state = state["np_random"]
    for wrapper in _wrappers(env):
        if isinstance(wrapper, TimeLimit) and "elapsed_steps" in state:
            wrapper._elapsed_steps = state["elapsed_steps"]
    if "qpos" in state:
        unwrapped.set_state(_from_json(state["qpos"]), _from_json(state["qvel"]))
    elif "state" in state:
        unwrapped.state = _from_json(state["state"])
        for name in CLASSIC_EXTRA_ATTRIBUTES:
            if name in state:
                setattr(unwrapped, name, _from_json(state[name]))


def vec_env_states(venv: VecEnv) -> list[dict[str, Any]] | None:
    """States of every env of a DummyVecEnv-based VecEnv (``None`` for other VecEnvs)."""
    inner = innermost_vec_env(venv)
    if not isinstance(inner, DummyVecEnv):
        return None
    return [env_state(env) for env in inner.envs]


def restore_vec_env_states(venv: VecEnv, states: list[dict[str, Any]]) -> None:
    """Reset the innermost VecEnv (not VecNormalize: its statistics must not move) and restore each env."""
    inner = innermost_vec_env(venv)
    inner.reset()
    for env, state in zip(inner.envs, states, strict=True):
        set_env_state(env, state)
