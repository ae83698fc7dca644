"""From validated run configs to a population: which runs can train together, and the batched agent they share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from agents.build import check_agent_config
from agents.population.base import PopulationAgent, PopulationConfigError
from agents.population.dqn import PopulationDQN
from agents.population.ppo import PopulationPPO
from agents.population.sac import PopulationSAC
from agents.population.td3 import PopulationTD3

# the population agents by ``agent.name``: a new one is a module implementing agents.population.base.PopulationAgent
AGENT_CLASSES: dict[str, type[PopulationAgent]] = {
    cls.name: cls for cls in (PopulationSAC, PopulationDQN, PopulationTD3, PopulationPPO)
}
POPULATION_AGENTS = tuple(AGENT_CLASSES)
# agent.sb3 keys the population engine implements (SB3's meaning); anything else is refused with one line
SUPPORTED_SB3_KEYS = {name: cls.sb3_keys for name, cls in AGENT_CLASSES.items()}
# keys that may differ between members of one population (everything else defines the shared computation)
PER_MEMBER_KEYS = (
    "seed",
    "sparsity",
    "run_dir",
    "resume",
    "agent.weight_decay",
    "agent.sb3.policy_kwargs.optimizer_kwargs.weight_decay",
)


def check_supported(cfg: Any) -> None:
    """Raise :class:`PopulationConfigError` for what the population engine does not implement.

    The agent node's own rules (:func:`agents.build.check_agent_config`, as on the SB3 path) come first; then the
    engine's refusals.
    """
    agent = cfg.agent.name
    if agent not in POPULATION_AGENTS:
        choices = " or ".join(f"agent={name}" for name in POPULATION_AGENTS)
        raise PopulationConfigError(f"the population engine trains {choices}, not '{agent}'")
    try:
        check_agent_config(cfg.agent)
    except ValueError as error:
        raise PopulationConfigError(error.args[0] if error.args else str(error)) from error
    unknown = sorted(set(cfg.agent.sb3) - set(SUPPORTED_SB3_KEYS[agent]))
    if unknown:
        raise PopulationConfigError(
            f"the population engine does not implement agent.sb3.{unknown[0]}; "
            f"supported: {', '.join(SUPPORTED_SB3_KEYS[agent])}"
        )
    policy_kwargs = set(cfg.agent.sb3.get("policy_kwargs") or {}) - set(AGENT_CLASSES[agent].policy_keys)
    if policy_kwargs:
        raise PopulationConfigError(
            f"the population engine does not implement agent.sb3.policy_kwargs.{sorted(policy_kwargs)[0]}"
        )
    sparsity = cfg.sparsity
    if sparsity.get("ift") is not None:  # docs/design.md decision 43
        raise PopulationConfigError(
            f"the population engine does not build sparsity.ift={sparsity.ift} (its networks are chains of plain "
            "batched Linear layers): of Sparse-IFT it trains Sparse Wide, sparsity.wide=true; use python -m sparse_rl.run"
        )
    if sparsity.get("structure_decay") is not None or sparsity.get("mask_decay", "none") != "none" or sparsity.get("sr_ste"):
        raise PopulationConfigError(
            "the population engine does not run the N:M recipes (sparsity.structure_decay, mask_decay, sr_ste): "
            "its groups have no per-group optimizer to step a latent; use python -m sparse_rl.run"
        )
    schedules = AGENT_CLASSES[agent].lr_schedules
    normalizes = AGENT_CLASSES[agent].on_policy  # VecNormalize per member: the rollout loop's (agents.population.normalize)
    if cfg.agent.n_envs != 1 or (cfg.agent.normalize and not normalizes) or cfg.agent.lr_schedule not in schedules:
        normalize = "" if normalizes else ", agent.normalize=false"
        raise PopulationConfigError(
            f"the population engine needs agent.n_envs=1{normalize}, agent.lr_schedule={' or '.join(schedules)}"
        )
    train_freq, gradient_steps = cfg.agent.sb3.get("train_freq", 1), cfg.agent.sb3.get("gradient_steps", 1)
    if not isinstance(train_freq, int) or not isinstance(gradient_steps, int) or gradient_steps < 1:
        raise PopulationConfigError(
            "the population engine needs an integer agent.sb3.train_freq and agent.sb3.gradient_steps >= 1"
        )


def compatibility_key(cfg: Any, net_arch: Any) -> str:
    """Runs with equal keys share one batched computation (same agent, env, widths, budgets, hyperparameters)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in PER_MEMBER_KEYS:
        *path, leaf = dotted.split(".")
        node = container
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    container["net_arch"] = net_arch
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_agent(
    cfg: Any,
    net_arch: Any,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    decays: Sequence[Mapping[str, float]],
    device: torch.device,
    capturable: bool,
) -> PopulationAgent:
    """The batched agent of ``len(decays)`` members for the shared config ``cfg`` (members' decays differ)."""
    obs_dim = int(observation_space.shape[0]) if len(observation_space.shape) == 1 else None
    if obs_dim is None:
        raise PopulationConfigError(
            f"the population engine trains MLPs on vector observations; this env's are {observation_space.shape}"
        )
    agent_class = AGENT_CLASSES[cfg.agent.name]
    return agent_class.from_config(cfg, net_arch, obs_dim, action_space, decays, device, capturable)


def member_decay(cfg: Any) -> dict[str, float]:
    """Per-group kernel L2 coefficients of one member (``agents.decay.kernel_decay``)."""
    from agents.decay import kernel_decay

    return kernel_decay(cfg.agent.name, float(cfg.agent.weight_decay), cfg.agent.get("loss"))
