"""TD3 (Fujimoto et al. 2018), made sparse: its policy classes, groups, clock, shapes, decay and diagnostics.

The paper has no TD3; it gets the same Keras ``wd·Σw²`` added to each network's loss. SB3's TD3 critic loss is
``Σ_i mse(q_i, y)`` (no 0.5, unlike its SAC), gradient ``∇Σmse + 2·wd·w`` → λ_critic = **2·wd**; the actor loss
``-mean(Q1)`` + ``wd·Σw²`` → λ_actor = **2·wd** (:mod:`agents.decay` for the mechanics).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from stable_baselines3 import TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.td3.policies import CnnPolicy as TD3CnnPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from agents.diagnostics_callback import discounts, on_replay, target_critic_min
from agents.policies import TwinCriticLayout, hidden_then_output, linears
from agents.sac import N_CRITICS
from agents.spec import AGENTS, AgentSpec, GroupLosses, Net, model_off_policy_gradient_steps
from sparse_rl.controller import SparseGroup


class TD3Layout(TwinCriticLayout):
    """A deterministic actor ``mu`` (hidden layers, one tanh output layer) with its own target, and twin critics."""

    def _actor_layout(self) -> list[tuple[list[nn.Linear], str]]:
        return hidden_then_output(linears(self.actor.features_extractor), linears(self.actor.mu))

    def _sync_targets(self) -> None:
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())


class DenseTD3Policy(TD3Layout, TD3Policy):
    pass


class DenseTD3CnnPolicy(TD3Layout, TD3CnnPolicy):
    pass


class SparseTD3Policy(TD3Layout, TD3Policy):
    masked_modules = ("actor", "actor_target", "critic", "critic_target")


class SparseTD3CnnPolicy(TD3Layout, TD3CnnPolicy):
    masked_modules = ("actor", "actor_target", "critic", "critic_target")


def diagnostic_losses(model: BaseAlgorithm, data: Any) -> GroupLosses:
    """SB3 TD3's (2.9) per-sample losses on a replay batch: critic ``sum_k (Q_k - y)^2`` with the smoothed target,
    actor ``-Q_1(s, mu(s))``."""
    with torch.no_grad():
        noise = data.actions.clone().normal_(0, model.target_policy_noise)
        noise = noise.clamp(-model.target_noise_clip, model.target_noise_clip)
        next_actions = (model.actor_target(data.next_observations) + noise).clamp(-1, 1)
        next_q = target_critic_min(model, data.next_observations, next_actions)
        target = data.rewards + (1 - data.dones) * discounts(model, data) * next_q

    def critic_loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, actions, y = batch
        return 1.0 * sum((q - y).pow(2).reshape(-1) for q in model.critic(obs, actions))  # SB3: sum(mse), no 0.5

    def actor_loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, _ = batch
        return -model.critic.q1_forward(obs, model.actor(obs)).reshape(-1)

    return {
        "critic": ((data.observations, data.actions, target), critic_loss),
        "actor": ((data.observations, torch.randn_like(data.actions)), actor_loss),
    }


def gradient_steps(model: BaseAlgorithm, total_timesteps: int) -> int:
    """The off-policy count rounded down to a multiple of ``policy_delay``, the last step the clock reaches.

    The clock is the delayed actor optimizer's, advancing ``policy_delay`` gradient steps per actor step
    (SB3 steps the actor when ``_n_updates % policy_delay == 0``), so its last value is this multiple.
    """
    delay = model.policy_delay
    return max(delay, model_off_policy_gradient_steps(model, total_timesteps) // delay * delay)


def _networks(obs: int, act: int, hidden: Mapping[str, list[int]]) -> dict[str, list[Net]]:
    """A deterministic actor (one head of A outputs); twin critics see (obs, action)."""
    return {"actor": [(obs, hidden["actor"], act)], "critic": [(obs + act, hidden["critic"], 1)] * N_CRITICS}


def _groups(model: BaseAlgorithm) -> list[SparseGroup]:
    return [
        SparseGroup("actor", model.actor, model.actor.optimizer, target=model.actor_target),
        SparseGroup("critic", model.critic, model.critic.optimizer, target=model.critic_target),  # twin critics, one budget
    ]


SPEC = AGENTS.register("td3")(
    AgentSpec(
        name="td3",
        algo=TD3,
        action_spaces=("continuous",),
        dense_policies={"mlp": DenseTD3Policy, "cnn": DenseTD3CnnPolicy},
        sparse_policies={"mlp": SparseTD3Policy, "cnn": SparseTD3CnnPolicy},
        groups=_groups,
        # the delayed actor step drives the clock: each topology update follows a real actor gradient (RigL's grow
        # scores) and the critic's latest one, taken at the critic step just before (docs/design.md decision 31)
        clock_optimizer=lambda m: m.actor.optimizer,
        gradient_steps=gradient_steps,
        clock_stride=lambda m: m.policy_delay,
        hidden_keys={"actor": "pi", "critic": "qf"},
        networks=_networks,
        decay_factors=lambda loss: {"actor": 2.0, "critic": 2.0},
        diagnostic_losses=on_replay(diagnostic_losses),
        action_noise=True,
        sparse_ift=True,
    )
)
