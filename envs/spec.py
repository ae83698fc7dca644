"""The validated description of one environment choice (one ``configs/env/**.yaml`` file).

A spec names its family, one of :data:`FAMILIES`: the registry that :mod:`envs.families` fills with one builder per
family (this module imports no builder, so it needs neither gymnasium nor the family modules).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sparse_rl.registry import Registry

ACTION_SPACES = ("continuous", "discrete")
# family name -> builder (EnvSpec, render_mode) -> gymnasium.Env; the builders register in envs/families.py
FAMILIES: Registry[Callable[..., Any]] = Registry("environment family")


@dataclass
class EnvSpec:
    """What to build: the family builder, its id and kwargs, and the declared action-space kind."""

    name: str  # the config choice the user typed, e.g. "dmc/cheetah-run"
    family: str  # builder registry name: gym, dmc, minatar, atari
    id: str  # gymnasium id (gym), "domain-task" (dmc) or game name (minatar, atari)
    action_space: str  # continuous or discrete
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra kwargs for gymnasium.make

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            choices = ", ".join(FAMILIES.names())
            raise ValueError(f"env '{self.name}': unknown family '{self.family}'; valid choices: {choices}")
        if self.action_space not in ACTION_SPACES:
            raise ValueError(
                f"env '{self.name}': unknown action_space '{self.action_space}'; valid choices: {', '.join(ACTION_SPACES)}"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EnvSpec:
        """Build from a plain mapping or an OmegaConf ``DictConfig`` with exactly the schema's keys."""
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        expected = [f.name for f in fields(cls)]
        missing = [k for k in expected if k not in cfg]
        extra = sorted(str(k) for k in cfg if k not in expected)
        if missing or extra:
            raise ValueError(f"env config must have exactly the keys {expected}; missing {missing}, unexpected {extra}")
        return cls(
            name=str(cfg["name"]),
            family=str(cfg["family"]),
            id=str(cfg["id"]),
            action_space=str(cfg["action_space"]),
            kwargs=dict(cfg["kwargs"] or {}),
        )
