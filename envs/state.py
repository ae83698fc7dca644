"""Capture and restore the internal state of gymnasium envs inside a VecEnv, as plain JSON data.

Supported: MuJoCo envs (``mj_getState`` with ``mjSTATE_INTEGRATION``, which includes the solver's warm start, plus
the kinematics the last ``mj_step`` left: qpos/qvel alone drift by 1e-12 within 50 steps on Ant and Walker2d, and
Ant reads body ``xpos`` before stepping) and classic-control envs (their ``state``), plus every env's RNG (a
numpy ``Generator``, or the legacy ``RandomState`` that shimmy's dm-control envs hold), time-limit counter
and ``Monitor`` episode counters (so ``rollout/ep_rew_mean`` continues the interrupted episode). Other envs
(ALE, dm-control, MinAtar) report ``exact: false``: a resumed run restarts their current episodes.
Nothing here unpickles anything.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

CLASSIC_EXTRA_ATTRIBUTES = ("steps_beyond_terminated", "last_u")
# mjData's position-dependent quantities as the last mj_step left them (computed before its last substep's
# integration): gymnasium's envs read some before stepping (Ant: body xpos, Humanoid: xipos), so they are state
MUJOCO_KINEMATICS = ("xpos", "xquat", "xmat", "xipos", "ximat", "geom_xpos", "geom_xmat", "site_xpos", "site_xmat",
                     "subtree_com")  # fmt: skip
MONITOR_ATTRIBUTES = ("rewards", "episode_returns", "episode_lengths", "total_steps", "needs_reset")


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


def rng_state(rng: np.random.Generator | np.random.RandomState) -> dict[str, Any]:
    """A numpy ``Generator``'s or legacy ``RandomState``'s state as JSON data."""
    if isinstance(rng, np.random.RandomState):
        name, keys, pos, has_gauss, gauss = rng.get_state()
        return {"legacy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator | np.random.RandomState, state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    if "legacy" in state:
        name, keys, pos, has_gauss, gauss = state["legacy"]
        rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    else:
        rng.bit_generator.state = state


def _mujoco_state(unwrapped: Any) -> dict[str, Any]:
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    full = np.empty(mujoco.mj_stateSize(unwrapped.model, spec))
    mujoco.mj_getState(unwrapped.model, unwrapped.data, full, spec)
    kinematics = {name: getattr(unwrapped.data, name).tolist() for name in MUJOCO_KINEMATICS}
    return {"mujoco_integration": full.tolist(), "mujoco_kinematics": kinematics}


def _set_mujoco_state(unwrapped: Any, state: dict[str, Any]) -> None:
    import mujoco

    full = np.asarray(state["mujoco_integration"], dtype=np.float64)
    mujoco.mj_setState(unwrapped.model, unwrapped.data, full, mujoco.mjtState.mjSTATE_INTEGRATION)
    for name, value in state["mujoco_kinematics"].items():
        target = getattr(unwrapped.data, name)
        target[...] = np.asarray(value, dtype=np.float64).reshape(target.shape)


def env_state(env: gym.Env) -> dict[str, Any]:
    """The env's RNG, time-limit and monitor counters and physical state (``exact`` says whether that is complete)."""
    unwrapped = env.unwrapped
    state: dict[str, Any] = {"np_random": rng_state(unwrapped.np_random), "exact": True}
    for wrapper in _wrappers(env):
        if isinstance(wrapper, TimeLimit):
            state["elapsed_steps"] = wrapper._elapsed_steps
        if isinstance(wrapper, Monitor):
            state["monitor"] = {name: _jsonable(getattr(wrapper, name)) for name in MONITOR_ATTRIBUTES}
    if hasattr(unwrapped, "set_state") and hasattr(unwrapped, "data"):  # gymnasium MuJoCo
        state["qpos"] = _jsonable(unwrapped.data.qpos.copy())
        state["qvel"] = _jsonable(unwrapped.data.qvel.copy())
        state.update(_mujoco_state(unwrapped))
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
    set_rng_state(unwrapped.np_random, state["np_random"])
    for wrapper in _wrappers(env):
        if isinstance(wrapper, TimeLimit) and "elapsed_steps" in state:
            wrapper._elapsed_steps = state["elapsed_steps"]
        if isinstance(wrapper, Monitor) and "monitor" in state:
            for name, value in state["monitor"].items():
                setattr(wrapper, name, list(value) if isinstance(value, list) else value)
    if "qpos" in state:
        unwrapped.set_state(_from_json(state["qpos"]), _from_json(state["qvel"]))
        if "mujoco_integration" in state:  # absent from checkpoints written before it was saved
            _set_mujoco_state(unwrapped, state)
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
