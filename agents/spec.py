"""The agents registry: how each SB3 algorithm is made sparse (which networks form which group, which
optimizer step drives the topology clock, how many gradient steps a run has)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stable_baselines3 import PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from torch.optim import Optimizer

from agents import policies
from agents.dqn import TD_LOSSES, LossDQN
from sparse_rl.controller import SparseGroup
from sparse_rl.registry import Registry


@dataclass(frozen=True)
class AgentSpec:
    """One algorithm's adapter: SB3 class, policies, groups and clock."""

    name: str
    algo: type[BaseAlgorithm]
    action_spaces: tuple[str, ...]
    dense_policies: dict[str, type[BasePolicy]]  # observation kind (mlp, cnn) -> policy class
    sparse_policies: dict[str, type[BasePolicy]]
    groups: Callable[[BaseAlgorithm], list[SparseGroup]]
    clock_optimizer: Callable[[BaseAlgorithm], Optimizer]  # its step() is one gradient step of the paper's clock
    gradient_steps: Callable[[BaseAlgorithm, int], int]  # total gradient steps for a budget of env steps
    # the clock's nominal value at a rollout start, for trainers that may skip gradient steps (PPO's target_kl)
    nominal_clock: Callable[[BaseAlgorithm], int] | None = None
    # gradient steps per clock_optimizer step (TD3: policy_delay; the clock still counts gradient steps)
    clock_stride: Callable[[BaseAlgorithm], int] | None = None
    td_losses: tuple[str, ...] = ()  # choices of ``agent.loss`` (empty: the agent has no TD-loss choice, loss=null)
    action_noise: bool = False  # whether ``agent.exploration_noise`` (Gaussian action noise) applies
    extra_checks: Callable[[Mapping[str, Any]], None] | None = None  # the agent's other config rules (ValueError)

    def check_config(self, agent_cfg: Mapping[str, Any]) -> None:
        """This agent's rules on the ``agent`` config node: one-line ``ValueError`` naming the key."""
        self.check_loss(agent_cfg.get("loss"))
        noise = agent_cfg.get("exploration_noise")
        if noise is not None and not self.action_noise:
            users = ", ".join(name for name, spec in AGENTS.items() if spec.action_noise)
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
            users = ", ".join(name for name, spec in AGENTS.items() if spec.td_losses)
            raise ValueError(f"agent.loss applies to {users} only; agent '{self.name}' needs agent.loss=null")

    def policy(self, observation_kind: str, sparse: bool) -> type[BasePolicy]:
        return self.sparse_policies[observation_kind] if sparse else self.dense_policies[observation_kind]


AGENTS: Registry[AgentSpec] = Registry("agent")


def off_policy_gradient_steps(
    total_timesteps: int, learning_starts: int, train_freq: int, gradient_steps: int, n_envs: int
) -> int:
    """Gradient steps of SAC/DQN: one batch of ``gradient_steps`` every ``train_freq`` env steps after warm-up."""
    collected = max(total_timesteps - learning_starts, 1)
    per_call = gradient_steps if gradient_steps > 0 else train_freq * n_envs
    return max(1, collected // (train_freq * n_envs) * per_call)


def _off_policy_gradient_steps(model: BaseAlgorithm, total_timesteps: int) -> int:
    return off_policy_gradient_steps(
        total_timesteps, model.learning_starts, model.train_freq.frequency, model.gradient_steps, model.n_envs
    )


def _td3_gradient_steps(model: BaseAlgorithm, total_timesteps: int) -> int:
    """TD3: the off-policy count rounded down to a multiple of ``policy_delay``, the last step the clock reaches.

    The clock is the delayed actor optimizer's, advancing ``policy_delay`` gradient steps per actor step
    (SB3 steps the actor when ``_n_updates % policy_delay == 0``), so its last value is this multiple.
    """
    delay = model.policy_delay
    return max(delay, _off_policy_gradient_steps(model, total_timesteps) // delay * delay)


def _ppo_gradient_steps(model: BaseAlgorithm, total_timesteps: int) -> int:
    """PPO: iterations × epochs × minibatches (paper §1: 489 × 10 × 32 = 156,480 for 1M steps)."""
    rollout = model.n_steps * model.n_envs
    return max(1, math.ceil(total_timesteps / rollout) * model.n_epochs * math.ceil(rollout / model.batch_size))


def _ppo_nominal_clock(model: BaseAlgorithm) -> int:
    """Gradient steps of the PPO iterations trained so far had none stopped early (``target_kl``)."""
    rollout = model.n_steps * model.n_envs
    return model.num_timesteps // rollout * model.n_epochs * math.ceil(rollout / model.batch_size)


def _ppo_checks(agent_cfg: Mapping[str, Any]) -> None:
    if (agent_cfg.get("init") or {}).get("mode") == "paper":
        raise ValueError("agent.init.mode=paper is not available for ppo: its paper init is SB3's orthogonal one (sb3)")


AGENTS.register("sac")(
    AgentSpec(
        name="sac",
        algo=SAC,
        action_spaces=("continuous",),
        dense_policies={"mlp": policies.DenseSACPolicy, "cnn": policies.DenseSACCnnPolicy},
        sparse_policies={"mlp": policies.SparseSACPolicy, "cnn": policies.SparseSACCnnPolicy},
        groups=lambda m: [
            # mu and log_std are the paper's one 256x2A output layer: ERK allocates them as one (paper_facts §2.2)
            SparseGroup("actor", m.actor, m.actor.optimizer, joint=[("mu", "log_std")]),
            SparseGroup("critic", m.critic, m.critic.optimizer, target=m.critic_target),
        ],
        clock_optimizer=lambda m: m.actor.optimizer,  # SB3 steps the critic, then the actor (paper §6 order)
        gradient_steps=_off_policy_gradient_steps,
    )
)

AGENTS.register("td3")(
    AgentSpec(
        name="td3",
        algo=TD3,
        action_spaces=("continuous",),
        dense_policies={"mlp": policies.DenseTD3Policy, "cnn": policies.DenseTD3CnnPolicy},
        sparse_policies={"mlp": policies.SparseTD3Policy, "cnn": policies.SparseTD3CnnPolicy},
        groups=lambda m: [
            SparseGroup("actor", m.actor, m.actor.optimizer, target=m.actor_target),
            SparseGroup("critic", m.critic, m.critic.optimizer, target=m.critic_target),  # twin critics, one budget
        ],
        # the delayed actor step drives the clock: each topology update follows a real actor gradient (RigL's grow
        # scores) and the critic's latest one, taken at the critic step just before (docs/design.md decision 31)
        clock_optimizer=lambda m: m.actor.optimizer,
        gradient_steps=_td3_gradient_steps,
        clock_stride=lambda m: m.policy_delay,
        action_noise=True,
    )
)

AGENTS.register("dqn")(
    AgentSpec(
        name="dqn",
        algo=LossDQN,
        action_spaces=("discrete",),
        dense_policies={"mlp": policies.DenseDQNPolicy, "cnn": policies.DenseDQNCnnPolicy},
        sparse_policies={"mlp": policies.SparseDQNPolicy, "cnn": policies.SparseDQNCnnPolicy},
        groups=lambda m: [SparseGroup("q", m.q_net, m.policy.optimizer, target=m.q_net_target)],
        clock_optimizer=lambda m: m.policy.optimizer,
        gradient_steps=_off_policy_gradient_steps,
        td_losses=tuple(TD_LOSSES),
    )
)

AGENTS.register("ppo")(
    AgentSpec(
        name="ppo",
        algo=PPO,
        action_spaces=("continuous", "discrete"),
        dense_policies={"mlp": policies.DensePPOPolicy, "cnn": policies.DensePPOCnnPolicy},
        sparse_policies={"mlp": policies.SparsePPOPolicy, "cnn": policies.SparsePPOCnnPolicy},
        groups=lambda m: [
            SparseGroup(
                "actor",
                m.policy,
                m.policy.optimizer,
                include=("mlp_extractor.policy_net.*", "action_net", "features_extractor.*"),
            ),
            SparseGroup("critic", m.policy, m.policy.optimizer, include=("mlp_extractor.value_net.*", "value_net")),
        ],
        clock_optimizer=lambda m: m.policy.optimizer,
        gradient_steps=_ppo_gradient_steps,
        nominal_clock=_ppo_nominal_clock,
        extra_checks=_ppo_checks,
    )
)
