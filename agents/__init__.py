"""Sparse DQN, SAC, TD3 and PPO: thin adapters over stable-baselines3 (no fork of its training loops).

Each agent is one module (``agents.dqn``, ``agents.ppo``, ``agents.sac``, ``agents.td3``) that registers its
:class:`~agents.spec.AgentSpec` in :data:`AGENTS`; asking this package for a name below imports all four.
The names are loaded lazily, so the torch-only modules of this package (``agents.initialization``,
``agents.decay``) can be imported without stable-baselines3 or gymnasium.
"""

from __future__ import annotations

import importlib
from typing import Any

AGENT_MODULES = ("agents.dqn", "agents.ppo", "agents.sac", "agents.td3")
_LAZY = {
    "AGENTS": "agents.spec",
    "AgentSpec": "agents.spec",
    "attach_controller": "agents.build",
    "build_model": "agents.build",
    "check_agent_config": "agents.build",
    "observation_kind": "agents.build",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'agents' has no attribute '{name}'")
    for module in AGENT_MODULES:  # each registers its spec on import
        importlib.import_module(module)
    return getattr(importlib.import_module(_LAZY[name]), name)
