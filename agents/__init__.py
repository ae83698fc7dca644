"""Sparse DQN, SAC, TD3 and PPO: thin adapters over stable-baselines3 (no fork of its training loops).

The SB3-facing names are loaded lazily, so the torch-only modules of this package (``agents.initialization``,
``agents.decay``) can be imported without stable-baselines3 or gymnasium.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AGENTS": "agents.spec",
    "AgentSpec": "agents.spec",
    "attach_controller": "agents.build",
    "build_model": "agents.build",
    "observation_kind": "agents.build",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'agents' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)
