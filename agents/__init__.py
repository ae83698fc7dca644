"""Sparse DQN, SAC and PPO: thin adapters over stable-baselines3 (no fork of its training loops)."""

from agents.build import attach_controller, build_model, observation_kind
from agents.registry import AGENTS, AgentSpec

__all__ = ["AGENTS", "AgentSpec", "attach_controller", "build_model", "observation_kind"]
