"""What an SB3 agent is, as one :class:`AgentSpec`, and the registry of them (:data:`AGENTS`).

Each agent's module (``agents/sac.py``, ``agents/td3.py``, ``agents/dqn.py``, ``agents/ppo.py``) builds its spec
and registers it; the shared machinery (``agents.build``, ``agents.decay``, ``agents.matching``,
``agents.diagnostics_callback``, ``experiment.plan``) reads the agent's facts from the spec and never asks which
agent it has. Adding an SB3 agent is one module, its configs and its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from torch.optim import Optimizer

from sparse_rl.controller import SparseGroup
from sparse_rl.registry import Registry

Net = tuple[int, list[int], int]  # one MLP as (n_in, hidden sizes, n_out)
Loss = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]  # a batch (tuple of tensors, dim 0 = samples) -> (batch,)
GroupLosses = dict[str, tuple[tuple[torch.Tensor, ...], Loss]]  # group -> (batch inputs, per-sample loss)


@dataclass(frozen=True)
class AgentSpec:
    """One SB3 algorithm made sparse: its classes, groups, clock, widths, decay, diagnostics and config rules."""

    name: str
    algo: type[BaseAlgorithm]
    action_spaces: tuple[str, ...]
    dense_policies: dict[str, type[BasePolicy]]  # observation kind (mlp, cnn) -> policy class
    sparse_policies: dict[str, type[BasePolicy]]
    groups: Callable[[BaseAlgorithm], list[SparseGroup]]
    clock_optimizer: Callable[[BaseAlgorithm], Optimizer]  # its step() is one gradient step of the paper's clock
    gradient_steps: Callable[[BaseAlgorithm, int], int]  # total gradient steps for a budget of env steps
    # group -> its key in SB3's net_arch dict (``None``: net_arch is one list of hidden sizes, the only group's)
    hidden_keys: Mapping[str, str | None]
    # (n_obs, n_act, {group: hidden sizes}) -> each group's MLPs in SB3's layout (equal-parameter width solving)
    networks: Callable[[int, int, Mapping[str, list[int]]], dict[str, list[Net]]]
    # agent.loss -> per group, the Adam weight_decay of its kernels per unit of the paper's wd (agents/decay.py)
    decay_factors: Callable[[str | None], Mapping[str, float]]
    # (model, batch size, rng) -> per group (inputs, per-sample loss), None while the buffer has no batch
    diagnostic_losses: Callable[[BaseAlgorithm, int, np.random.Generator], GroupLosses | None]
    # the clock's nominal value at a rollout start, for trainers that may skip gradient steps (PPO's target_kl)
    nominal_clock: Callable[[BaseAlgorithm], int] | None = None
    # gradient steps per clock_optimizer step (TD3: policy_delay; the clock still counts gradient steps)
    clock_stride: Callable[[BaseAlgorithm], int] | None = None
    td_losses: tuple[str, ...] = ()  # choices of ``agent.loss`` (empty: no TD-loss choice, agent.loss=null)
    action_noise: bool = False  # whether ``agent.exploration_noise`` (Gaussian action noise) applies
    # whether ``sparsity.ift`` applies: the policies build their MLPs with SB3's make_actor/make_critic/make_q_net,
    # whose hidden layers agents.policies transforms (Sparse-IFT, sparse_rl/ift.py)
    sparse_ift: bool = False
    extra_checks: Callable[[Mapping[str, Any]], None] | None = None  # the agent's other config rules (ValueError)

    @property
    def group_names(self) -> tuple[str, ...]:
        """The agent's sparse groups (``sparsity.<group>`` overrides, per-group decay and widths)."""
        return tuple(self.hidden_keys)

    def policy(self, observation_kind: str, sparse: bool) -> type[BasePolicy]:
        return self.sparse_policies[observation_kind] if sparse else self.dense_policies[observation_kind]

    def check_config(self, agent_cfg: Mapping[str, Any]) -> None:
        """This agent's rules on the ``agent`` config node: a one-line ``ValueError`` naming the key."""
        self.check_loss(agent_cfg.get("loss"))
        noise = agent_cfg.get("exploration_noise")
        if noise is not None and not self.action_noise:
            users = ", ".join(name for name, spec in registered().items() if spec.action_noise)
            raise ValueError(
                f"agent.exploration_noise is the Gaussian action-noise std of {users}; "
                f"agent '{self.name}' needs agent.exploration_noise=null"
            )
        if noise is not None and noise < 0:
            raise ValueError(f"agent.exploration_noise must be >= 0 (the std of the Gaussian action noise), got {noise}")
        if self.extra_checks is not None:
            self.extra_checks(agent_cfg)

    def check_loss(self, loss: str | None) -> None:
        """``agent.loss`` must be one of :attr:`td_losses`, or ``None`` when the agent has none."""
        if self.td_losses and loss not in self.td_losses:
            raise ValueError(f"agent.loss '{loss}' is not a {self.name} loss; valid choices: {', '.join(self.td_losses)}")
        if not self.td_losses and loss is not None:
            users = ", ".join(name for name, spec in registered().items() if spec.td_losses)
            raise ValueError(f"agent.loss applies to {users} only; agent '{self.name}' needs agent.loss=null")


AGENTS: Registry[AgentSpec] = Registry("agent")


def registered() -> Registry[AgentSpec]:
    """:data:`AGENTS` with every agent module imported (each registers its spec on import)."""
    from agents import AGENTS as loaded  # the package imports the agent modules

    return loaded


def agent_spec(agent: str | AgentSpec) -> AgentSpec:
    """``agent`` itself, or the spec registered under that name (unknown: ``ValueError`` naming the choices)."""
    if isinstance(agent, AgentSpec):
        return agent
    try:
        return registered().get(agent)
    except KeyError as error:
        raise ValueError(error.args[0]) from None


def spec_of(model: BaseAlgorithm) -> AgentSpec:
    """The registered agent whose algorithm ``model`` runs (its class, or the SB3 class an agent's class extends)."""
    for _, spec in registered().items():
        if isinstance(model, spec.algo) or issubclass(spec.algo, type(model)):
            return spec
    raise ValueError(f"{type(model).__name__} is no registered agent's algorithm; agents: {', '.join(registered())}")


def off_policy_gradient_steps(
    total_timesteps: int, learning_starts: int, train_freq: int, gradient_steps: int, n_envs: int
) -> int:
    """Gradient steps of SAC/DQN: one batch of ``gradient_steps`` every ``train_freq`` env steps after warm-up."""
    collected = max(total_timesteps - learning_starts, 1)
    per_call = gradient_steps if gradient_steps > 0 else train_freq * n_envs
    return max(1, collected // (train_freq * n_envs) * per_call)


def model_off_policy_gradient_steps(model: BaseAlgorithm, total_timesteps: int) -> int:
    """:func:`off_policy_gradient_steps` of an SB3 off-policy model."""
    return off_policy_gradient_steps(
        total_timesteps, model.learning_starts, model.train_freq.frequency, model.gradient_steps, model.n_envs
    )
