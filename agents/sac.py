"""SAC, made sparse: its policy classes, groups, network shapes, kernel decay and diagnostic losses, as one spec.

Kernel decay (:mod:`agents.decay` for the mechanics): TF-Agents multiplies the whole critic loss, L2 term included,
by 0.5: ``0.5·(Σ_i mse(q_i, y) + wd·Σw²)`` → gradient ``0.5·∇Σmse + wd·w``; SB3's critic loss is
``0.5·Σ_i mse(q_i, y)``, the same TD part, so λ_critic = **wd**. TF-Agents' actor loss ``+ wd·Σw²`` → ``∇L + 2·wd·w``;
SB3's actor loss is the same expression, so λ_actor = **2·wd** (google-research/rigl
``rigl/rl/tfagents/sac_train_eval.py``: the Keras L2 penalty added to the actor and critic losses).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.sac.policies import CnnPolicy as SACCnnPolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from agents.diagnostics_callback import discounts, on_replay, target_critic_min
from agents.policies import TwinCriticLayout, linears
from agents.spec import AGENTS, AgentSpec, GroupLosses, Net, model_off_policy_gradient_steps
from sparse_rl.controller import SparseGroup

# SB3's default number of critics of SAC and TD3 (``n_critics=2`` in ``stable_baselines3/sac/policies.py``
# ``SACPolicy`` and ``stable_baselines3/td3/policies.py`` ``TD3Policy``): the twin critics, one sparse group.
N_CRITICS = 2


class SACLayout(TwinCriticLayout):
    """SAC's actor: hidden layers, then the ``mu`` and ``log_std`` heads drawn as the paper's one 256×2A layer."""

    def _actor_layout(self) -> list[tuple[list[nn.Linear], str]]:
        actor = self.actor
        layout = [([m], "hidden") for m in linears(actor.features_extractor) + linears(actor.latent_pi)]
        if not isinstance(actor.mu, nn.Linear):
            raise ValueError("agent.init.mode=paper supports SAC's plain Linear mu head (no gSDE)")
        layout.append(([actor.mu, actor.log_std], "output"))  # the paper's one 256x2A output layer
        return layout

    def _sync_targets(self) -> None:
        self.critic_target.load_state_dict(self.critic.state_dict())


class DenseSACPolicy(SACLayout, SACPolicy):
    pass


class DenseSACCnnPolicy(SACLayout, SACCnnPolicy):
    pass


class SparseSACPolicy(SACLayout, SACPolicy):
    masked_modules = ("actor", "critic", "critic_target")


class SparseSACCnnPolicy(SACLayout, SACCnnPolicy):
    masked_modules = ("actor", "critic", "critic_target")


def _ent_coef(model: BaseAlgorithm) -> torch.Tensor:
    log_ent_coef = getattr(model, "log_ent_coef", None)
    if getattr(model, "ent_coef_optimizer", None) is not None and log_ent_coef is not None:
        return torch.exp(log_ent_coef.detach())
    return model.ent_coef_tensor


def diagnostic_losses(model: BaseAlgorithm, data: Any) -> GroupLosses:
    """SB3 SAC's (2.9) per-sample losses on a replay batch: critic ``0.5 * sum_k (Q_k(s, a) - y)^2`` with the soft
    target, actor ``alpha * log pi(a|s) - min_k Q_k(s, a)`` (its reparameterisation noise is an input)."""
    with torch.no_grad():
        ent_coef = _ent_coef(model)
        next_actions, next_log_prob = model.actor.action_log_prob(data.next_observations)
        next_q = target_critic_min(model, data.next_observations, next_actions)
        next_q = next_q - ent_coef * next_log_prob.reshape(-1, 1)
        target = data.rewards + (1 - data.dones) * discounts(model, data) * next_q

    def critic_loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, actions, y = batch
        return 0.5 * sum((q - y).pow(2).reshape(-1) for q in model.critic(obs, actions))

    def actor_loss(batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, noise = batch
        # SB3's action_log_prob with the reparameterisation noise drawn outside vmap (a draw inside it is refused)
        mean, log_std, _ = model.actor.get_action_dist_params(obs)
        dist = copy.copy(model.actor.action_dist).proba_distribution(mean, log_std)  # SB3's squashed Gaussian
        gaussian = mean + log_std.exp() * noise
        actions_pi = torch.tanh(gaussian)
        log_prob = dist.log_prob(actions_pi, gaussian)
        min_q, _ = torch.min(torch.cat(model.critic(obs, actions_pi), dim=1), dim=1, keepdim=True)
        return (ent_coef * log_prob.reshape(-1, 1) - min_q).reshape(-1)

    return {
        "critic": ((data.observations, data.actions, target), critic_loss),
        "actor": ((data.observations, torch.randn_like(data.actions)), actor_loss),
    }


def _networks(obs: int, act: int, hidden: Mapping[str, list[int]]) -> dict[str, list[Net]]:
    """Actor: mean and log-std heads (2A outputs); critics see (obs, action)."""
    return {"actor": [(obs, hidden["actor"], 2 * act)], "critic": [(obs + act, hidden["critic"], 1)] * N_CRITICS}


def _groups(model: BaseAlgorithm) -> list[SparseGroup]:
    # mu and log_std are the paper's one Dense(2·act_dim) output layer (google-research/rigl
    # rigl/rl/tfagents/sparse_tanh_normal_projection_network.py): ERK allocates them as one
    return [
        SparseGroup("actor", model.actor, model.actor.optimizer, joint=[("mu", "log_std")]),
        SparseGroup("critic", model.critic, model.critic.optimizer, target=model.critic_target),
    ]


SPEC = AGENTS.register("sac")(
    AgentSpec(
        name="sac",
        algo=SAC,
        action_spaces=("continuous",),
        dense_policies={"mlp": DenseSACPolicy, "cnn": DenseSACCnnPolicy},
        sparse_policies={"mlp": SparseSACPolicy, "cnn": SparseSACCnnPolicy},
        groups=_groups,
        # SB3 steps the critic, then the actor, as TF-Agents' SAC (rigl/rl/tfagents/sac_train_eval.py)
        clock_optimizer=lambda m: m.actor.optimizer,
        gradient_steps=model_off_policy_gradient_steps,
        hidden_keys={"actor": "pi", "critic": "qf"},
        networks=_networks,
        decay_factors=lambda loss: {"actor": 2.0, "critic": 1.0},
        diagnostic_losses=on_replay(diagnostic_losses),
        sparse_ift=True,
    )
)
