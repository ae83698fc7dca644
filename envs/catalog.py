"""The env choices available as ``configs/env/**.yaml`` and early agent/env action-space checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from envs.spec import ACTION_SPACES, EnvSpec

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def available_env_names(configs_dir: str | Path = CONFIGS_DIR, action_space: str | None = None) -> list[str]:
    """Relative config names under ``<configs_dir>/env`` (e.g. ``CartPole``, ``dmc/cheetah-run``), sorted.

    With ``action_space``, only the choices whose config declares that action-space kind.
    """
    env_dir = Path(configs_dir) / "env"
    names = []
    for path in sorted(env_dir.rglob("*.yaml")):
        if action_space is None or OmegaConf.load(path).get("action_space") == action_space:
            names.append(path.relative_to(env_dir).with_suffix("").as_posix())
    return names


def load_env_spec(name: str, configs_dir: str | Path = CONFIGS_DIR) -> EnvSpec:
    """The :class:`EnvSpec` of config choice ``name`` (e.g. ``dmc/cheetah-run``)."""
    path = Path(configs_dir) / "env" / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown env '{name}'; valid choices: {', '.join(available_env_names(configs_dir))}")
    return EnvSpec.from_config(OmegaConf.load(path))


def check_action_space(spec: EnvSpec, allowed: Sequence[str], agent: str, configs_dir: str | Path = CONFIGS_DIR) -> None:
    """Raise a one-line ``ValueError`` if ``agent`` (supporting ``allowed`` kinds) cannot act in ``spec``'s env."""
    unknown = [kind for kind in allowed if kind not in ACTION_SPACES]
    if unknown:
        raise ValueError(f"agent '{agent}': unknown action space kinds {unknown}; valid choices: {', '.join(ACTION_SPACES)}")
    if spec.action_space in allowed:
        return
    fitting = [name for kind in allowed for name in available_env_names(configs_dir, kind)]
    raise ValueError(
        f"agent '{agent}' needs a {' or '.join(allowed)} action space but env '{spec.name}' is {spec.action_space}; "
        f"{' or '.join(allowed)} envs: {', '.join(fitting)}"
    )
