"""Placeholder until the fidelity branch lands (replaced by its version)."""

from __future__ import annotations


def kernel_decay(agent: str, weight_decay: float, loss: str | None) -> dict[str, float]:
    groups = {"sac": ("actor", "critic"), "dqn": ("q",), "ppo": ("actor", "critic")}[agent]
    return dict.fromkeys(groups, weight_decay)
