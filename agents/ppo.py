"""PPO, made sparse: its policy classes, groups, clock, network shapes, kernel decay, diagnostics and config rule.

Kernel decay (:mod:`agents.decay` for the mechanics): the L2 term is added to TF-Agents' PPO loss (policy-gradient
loss + 0.5·value MSE), whose scale is SB3's (``vf_coef=0.5``), so λ_actor = λ_critic = **2·wd**. The paper passes
wd as the PPO agent's policy, value and shared L2 coefficients (google-research/rigl
``rigl/rl/tfagents/ppo_train_eval.py``); this assumes TF-Agents' default PPO loss, nothing finer is published.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy

from agents.diagnostics_callback import on_rollout
from agents.policies import AdaptedPolicy, group_kernels
from agents.spec import AGENTS, AgentSpec, GroupLosses, Net
from sparse_rl.controller import SparseGroup

# The layers of each group in SB3's ActorCriticPolicy (sparse groups and decay groups alike). SB3 aliases
# ``pi_features_extractor`` (and, when shared, ``vf_features_extractor``) to ``features_extractor``; torch's
# ``named_modules`` lists a shared module once, under ``features_extractor``, the actor's.
GROUP_GLOBS = {
    "actor": ("mlp_extractor.policy_net.*", "action_net", "features_extractor.*"),
    "critic": ("mlp_extractor.value_net.*", "value_net", "vf_features_extractor.*"),
}


class PPOLayout(AdaptedPolicy):
    """PPO keeps SB3's orthogonal init (``ortho_init``, the paper's): ``agent.init.mode`` must be ``sb3``."""

    def _decay_layout(self):
        return [(self, "optimizer", {group: group_kernels(self, globs) for group, globs in GROUP_GLOBS.items()})]


class DensePPOPolicy(PPOLayout, ActorCriticPolicy):
    pass


class DensePPOCnnPolicy(PPOLayout, ActorCriticCnnPolicy):
    pass


class SparsePPOPolicy(PPOLayout, ActorCriticPolicy):
    masked_modules = ("mlp_extractor", "action_net", "value_net")


class SparsePPOCnnPolicy(PPOLayout, ActorCriticCnnPolicy):
    masked_modules = ("features_extractor", "mlp_extractor", "action_net", "value_net")


def diagnostic_losses(model: BaseAlgorithm, batch: tuple[torch.Tensor, ...]) -> GroupLosses:
    """SB3 PPO's (2.9) per-sample ``clipped surrogate + ent_coef * entropy loss + vf_coef * value loss`` on rollout
    samples, for both groups (each group's parameters get only their own terms' gradient)."""
    obs, actions, old_values, old_log_prob, advantages, returns = batch
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    if model.normalize_advantage and len(advantages) > 1:  # over the batch, as SB3 does over a minibatch
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    clip = model.clip_range(model._current_progress_remaining)
    clip_vf = model.clip_range_vf(model._current_progress_remaining) if model.clip_range_vf is not None else None

    def loss(sample: tuple[torch.Tensor, ...]) -> torch.Tensor:
        obs, actions, old_values, old_log_prob, advantages, returns = sample
        values, log_prob, entropy = model.policy.evaluate_actions(obs, actions)
        values = values.flatten()
        ratio = torch.exp(log_prob - old_log_prob)
        policy_loss = -torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip, 1 + clip))
        if clip_vf is not None:
            values = old_values + torch.clamp(values - old_values, -clip_vf, clip_vf)
        entropy_loss = log_prob if entropy is None else -entropy
        return policy_loss + model.ent_coef * entropy_loss + model.vf_coef * (returns - values).pow(2)

    inputs = (obs, actions, old_values, old_log_prob, advantages, returns)
    return {"actor": (inputs, loss), "critic": (inputs, loss)}


def rollout_gradient_steps(total_timesteps: int, n_steps: int, n_envs: int, n_epochs: int, batch_size: int) -> int:
    """Iterations × epochs × minibatches (489 × 10 × 32 = 156,480 for 1M steps: google-research/rigl
    ``rigl/rl/tfagents/configs/ppo_mujoco_dense_config.gin``); SB3 collects whole rollouts, the last one past the
    budget included."""
    rollout = n_steps * n_envs
    return max(1, math.ceil(total_timesteps / rollout) * n_epochs * math.ceil(rollout / batch_size))


def gradient_steps(model: BaseAlgorithm, total_timesteps: int) -> int:
    """:func:`rollout_gradient_steps` of ``model``'s settings."""
    return rollout_gradient_steps(total_timesteps, model.n_steps, model.n_envs, model.n_epochs, model.batch_size)


def nominal_clock(model: BaseAlgorithm) -> int:
    """Gradient steps of the PPO iterations trained so far had none stopped early (``target_kl``)."""
    rollout = model.n_steps * model.n_envs
    return model.num_timesteps // rollout * model.n_epochs * math.ceil(rollout / model.batch_size)


def _networks(obs: int, act: int, hidden: Mapping[str, list[int]]) -> dict[str, list[Net]]:
    return {"actor": [(obs, hidden["actor"], act)], "critic": [(obs, hidden["critic"], 1)]}


def _check_config(agent_cfg: Mapping[str, Any]) -> None:
    if (agent_cfg.get("init") or {}).get("mode") == "paper":
        raise ValueError("agent.init.mode=paper is not available for ppo: its paper init is SB3's orthogonal one (sb3)")


SPEC = AGENTS.register("ppo")(
    AgentSpec(
        name="ppo",
        algo=PPO,
        action_spaces=("continuous", "discrete"),
        dense_policies={"mlp": DensePPOPolicy, "cnn": DensePPOCnnPolicy},
        sparse_policies={"mlp": SparsePPOPolicy, "cnn": SparsePPOCnnPolicy},
        groups=lambda m: [
            SparseGroup(group, m.policy, m.policy.optimizer, include=globs) for group, globs in GROUP_GLOBS.items()
        ],
        clock_optimizer=lambda m: m.policy.optimizer,
        gradient_steps=gradient_steps,
        nominal_clock=nominal_clock,
        hidden_keys={"actor": "pi", "critic": "vf"},
        networks=_networks,
        decay_factors=lambda loss: {"actor": 2.0, "critic": 2.0},
        diagnostic_losses=on_rollout(diagnostic_losses),
        extra_checks=_check_config,
    )
)
