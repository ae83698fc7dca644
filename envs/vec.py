"""Vectorised, monitored, seeded envs built with SB3's own ``make_vec_env``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from envs.families import make_single_env
from envs.spec import EnvSpec

FRAME_STACK = {"atari": 4}  # DQN's 4-frame history (Mnih et al. 2015), stacked on the last (channel) axis


EVAL_SEED_OFFSET = 10_000  # a run's evaluation env is seeded seed + this: its episodes differ from training's


def make_vec_env(
    spec: EnvSpec,
    n_envs: int,
    seed: int,
    *,
    vec_env_cls: type[VecEnv] | None = None,
    monitor_dir: str | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
    wrapper_class: Callable[..., gym.Env] | None = None,
    wrapper_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """``n_envs`` copies of ``spec`` (env ``i`` seeded with ``seed + i``), each in a ``Monitor``; Atari frames stacked.

    ``wrapper_class(env, **wrapper_kwargs)`` wraps each single env outside its ``Monitor``, below the frame stack
    (e.g. :class:`envs.noise.ObservationNoise`).
    """
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    venv = sb3_make_vec_env(
        functools.partial(make_single_env, spec),
        n_envs=n_envs,
        seed=seed,
        vec_env_cls=vec_env_cls,
        monitor_dir=monitor_dir,
        vec_env_kwargs=vec_env_kwargs,
        wrapper_class=wrapper_class,
        wrapper_kwargs=wrapper_kwargs,
    )
    if spec.family in FRAME_STACK:
        venv = VecFrameStack(venv, n_stack=FRAME_STACK[spec.family])
    return venv
