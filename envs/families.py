"""One builder per environment family, each turning an :class:`EnvSpec` into a single ``gymnasium.Env``.

The builders register in :data:`envs.spec.FAMILIES` (re-exported here), the names an :class:`EnvSpec` accepts.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym

from envs.quiet import headless_dm_control, install_mujoco_warning_filter
from envs.spec import FAMILIES, EnvSpec

# ALE v5 skips 4 frames itself; the AtariWrapper does the skip (with max-pooling) instead, so the ALE must not.
ATARI_MAKE_KWARGS: dict[str, Any] = {"frameskip": 1, "repeat_action_probability": 0.25}  # sticky actions, Machado et al. 2018
# Paper preprocessing: frame skip 4 + max-pool, 84x84 grayscale, reward clipping, no terminal on life loss.
ATARI_WRAPPER_KWARGS: dict[str, Any] = {
    "frame_skip": 4,
    "screen_size": 84,
    "terminal_on_life_loss": False,
    "clip_reward": True,
    "noop_max": 0,  # paper/Dopamine: sticky actions (p=0.25) instead of random no-op starts
}


@FAMILIES.register("gym")
def make_gym(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """Any registered gymnasium id (MuJoCo v5, classic control): ``gymnasium.make(id, **kwargs)``."""
    if str(gym.spec(spec.id).entry_point).startswith("gymnasium.envs.mujoco"):
        install_mujoco_warning_filter()
    return gym.make(spec.id, render_mode=render_mode, **spec.kwargs)


@FAMILIES.register("dmc")
def make_dmc(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """A DeepMind Control Suite task through shimmy (``dm_control/<domain>-<task>-v0``), Dict obs flattened to a Box.

    Observations stay float64, as in gymnasium's MuJoCo envs; SB3 casts them to float32 inside the policy.
    """
    headless_dm_control(render_mode)
    import shimmy

    install_mujoco_warning_filter()  # after dm-control's import: it installs its own handler then
    gym.register_envs(shimmy)
    env = gym.make(f"dm_control/{spec.id}-v0", render_mode=render_mode, **spec.kwargs)
    return gym.wrappers.FlattenObservation(env)


@functools.cache
def _register_minatar() -> None:
    """Register the ``MinAtar/*`` ids once (gymnasium 1.x has no automatic plugin loading)."""
    import minatar.gym

    minatar.gym.register_envs()


@FAMILIES.register("minatar")
def make_minatar(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """A MinAtar game, e.g. ``breakout`` -> ``MinAtar/Breakout-v1``.

    Observations are left as the (10, 10, C) bool grid: one byte per cell in replay buffers, and SB3 casts to float
    in ``preprocess_obs`` (bool is not an image space for SB3, so its CnnPolicy does not apply; use MlpPolicy or a custom net).
    """
    _register_minatar()
    game = spec.id.title().replace("_", "")  # minatar.gym's own naming: space_invaders -> SpaceInvaders
    return gym.make(f"MinAtar/{game}-v1", render_mode=render_mode, **spec.kwargs)


@FAMILIES.register("atari")
def make_atari(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """An ALE game (``Pong`` -> ``ALE/Pong-v5``) with SB3's ``AtariWrapper``; frames are stacked in :func:`make_vec_env`."""
    import ale_py
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{spec.id}-v5", render_mode=render_mode, **{**ATARI_MAKE_KWARGS, **spec.kwargs})
    return AtariWrapper(env, **ATARI_WRAPPER_KWARGS)


def action_space_kind(space: gym.Space) -> str:
    """``continuous`` for a Box, ``discrete`` for a Discrete space."""
    if isinstance(space, gym.spaces.Box):
        return "continuous"
    if isinstance(space, gym.spaces.Discrete):
        return "discrete"
    raise ValueError(f"unsupported action space {space}; expected Box (continuous) or Discrete (discrete)")


def make_single_env(spec: EnvSpec, render_mode: str | None = None) -> gym.Env:
    """Build one env with its family's builder and check it has the action-space kind the config declares."""
    env = FAMILIES.get(spec.family)(spec, render_mode)
    kind = action_space_kind(env.action_space)
    if kind != spec.action_space:
        env.close()
        raise ValueError(f"env '{spec.name}' is declared {spec.action_space} in its config but builds {env.action_space}")
    return env
