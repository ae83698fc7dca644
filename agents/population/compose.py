"""From validated run configs to a population: which runs can train together, and the batched agent they share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from gymnasium import spaces
from omegaconf import OmegaConf

from agents.initialization import init_linear_
from agents.population.base import PopulationAgent
from agents.population.dqn import PopulationDQN
from agents.population.networks import BatchedMLP, init_member_rows
from agents.population.sac import N_CRITICS, PopulationSAC

POPULATION_AGENTS = ("sac", "dqn")
# agent.sb3 keys the population engine implements (SB3's meaning); anything else is refused with one line
SUPPORTED_SB3_KEYS = {
    "sac": ("learning_rate", "buffer_size", "batch_size", "tau", "gamma", "learning_starts", "train_freq", "gradient_steps",
            "ent_coef", "target_entropy", "policy_kwargs"),
    "dqn": ("learning_rate", "buffer_size", "batch_size", "learning_starts", "target_update_interval", "tau", "gamma",
            "train_freq", "gradient_steps", "exploration_fraction", "exploration_initial_eps", "exploration_final_eps",
            "max_grad_norm", "policy_kwargs"),
}  # fmt: skip
SB3_DEFAULT_MAX_GRAD_NORM = 10.0  # stable_baselines3.DQN's default
# keys that may differ between members of one population (everything else defines the shared computation)
PER_MEMBER_KEYS = (
    "seed",
    "sparsity",
    "run_dir",
    "resume",
    "agent.weight_decay",
    "agent.sb3.policy_kwargs.optimizer_kwargs.weight_decay",
)


class PopulationConfigError(ValueError):
    """A run config the population engine cannot train (one line, naming the key and the valid choices)."""


def check_supported(cfg: Any) -> None:
    """Raise :class:`PopulationConfigError` for what the population engine does not implement."""
    agent = cfg.agent.name
    if agent not in POPULATION_AGENTS:
        raise PopulationConfigError(f"the population engine trains agent=sac or agent=dqn, not '{agent}'")
    unknown = sorted(set(cfg.agent.sb3) - set(SUPPORTED_SB3_KEYS[agent]))
    if unknown:
        raise PopulationConfigError(
            f"the population engine does not implement agent.sb3.{unknown[0]}; "
            f"supported: {', '.join(SUPPORTED_SB3_KEYS[agent])}"
        )
    policy_kwargs = set(cfg.agent.sb3.get("policy_kwargs") or {}) - {"optimizer_kwargs"}
    if policy_kwargs:
        raise PopulationConfigError(
            f"the population engine does not implement agent.sb3.policy_kwargs.{sorted(policy_kwargs)[0]}"
        )
    if cfg.agent.n_envs != 1 or cfg.agent.normalize or cfg.agent.lr_schedule != "constant":
        raise PopulationConfigError(
            "the population engine needs agent.n_envs=1, agent.normalize=false, agent.lr_schedule=constant"
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


def hidden_sizes(net_arch: Any, key: str) -> list[int]:
    """Hidden widths of one network from SB3's net_arch (a shared list, or a dict such as ``{pi: [...], qf: [...]}``)."""
    return [int(x) for x in (net_arch[key] if isinstance(net_arch, Mapping) else net_arch)]


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
    sb3 = cfg.agent.sb3
    optimizer_kwargs = dict((sb3.get("policy_kwargs") or {}).get("optimizer_kwargs") or {})
    obs_dim = int(observation_space.shape[0]) if len(observation_space.shape) == 1 else None
    if obs_dim is None:
        raise PopulationConfigError(
            f"the population engine trains MLPs on vector observations; this env's are {observation_space.shape}"
        )
    k = len(decays)
    if cfg.agent.name == "sac":
        if net_arch_differs(net_arch):
            raise PopulationConfigError("the population engine needs the same hidden widths for actor and critic")
        return PopulationSAC(
            k, obs_dim, int(action_space.shape[0]), hidden_sizes(net_arch, "pi"), cfg.agent.activation,
            gamma=sb3.gamma, tau=sb3.tau, learning_rate=sb3.learning_rate, ent_coef=sb3.get("ent_coef", "auto"),
            target_entropy=sb3.get("target_entropy", "auto"), optimizer_kwargs=optimizer_kwargs,
            actor_decay=[d["actor"] for d in decays], critic_decay=[d["critic"] for d in decays], device=device,
            capturable=capturable,
        )  # fmt: skip
    return PopulationDQN(
        k, obs_dim, int(action_space.n), hidden_sizes(net_arch, "q"), cfg.agent.activation,
        gamma=sb3.gamma, learning_rate=sb3.learning_rate, loss=cfg.agent.loss,
        max_grad_norm=float(sb3.get("max_grad_norm", SB3_DEFAULT_MAX_GRAD_NORM)), optimizer_kwargs=optimizer_kwargs,
        q_decay=[d["q"] for d in decays], device=device, capturable=capturable,
    )  # fmt: skip


def net_arch_differs(net_arch: Any) -> bool:
    return isinstance(net_arch, Mapping) and list(net_arch.get("pi", [])) != list(net_arch.get("qf", []))


def init_cfg_of(cfg: Any) -> dict[str, Any]:
    """The per-role init schemes of ``agent.init`` (``mode: sb3`` or absent: torch's default, what SB3 gets)."""
    init = cfg.agent.get("init")
    if init is None or init.get("mode") == "sb3":
        default = {"scheme": "torch_default"}
        return {"hidden": default, "output": default}
    return {"hidden": dict(init.hidden), "output": dict(init.output)}


def initialise_member(agent: PopulationAgent, member: int, seed: int, init_cfg: Mapping[str, Any]) -> None:
    """Draw member ``member``'s initial weights from its own generator (seeded with its run seed)."""
    generator = torch.Generator().manual_seed(seed)
    nets: list[tuple[BatchedMLP, list[int]]]
    if isinstance(agent, PopulationSAC):
        nets = [(agent.actor, [member]), (agent.critic, [N_CRITICS * member + c for c in range(N_CRITICS)])]
    else:
        nets = [(agent.q_net, [member])]
    for mlp, rows in nets:
        init_member_rows(mlp, rows, generator, init_cfg, init_linear_)


def member_decay(cfg: Any) -> dict[str, float]:
    """Per-group kernel L2 coefficients of one member (``agents.decay.kernel_decay``)."""
    from agents.decay import kernel_decay

    return kernel_decay(cfg.agent.name, float(cfg.agent.weight_decay), cfg.agent.get("loss"))
