"""Batched SAC (Haarnoja et al. 2018) with SB3's update math, for K members at once.

One :meth:`PopulationSAC.update` is, for every member, exactly one iteration of ``stable_baselines3.SAC.train``'s loop
(entropy-coefficient step, critic step, actor step through the updated critics, Polyak), parity-tested against it.
The noise of the two policy samples is an input, so the update is a pure function of tensors (CUDA-graph friendly).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.distributions import Normal

from agents.population.base import (
    DeviceClock,
    LayerPair,
    PopulationAgent,
    PopulationConfigError,
    adam,
    hidden_sizes,
    polyak_,
    sb3_linears,
)
from agents.population.networks import BatchedMLP, member_module, sb3_mlp_names
from agents.population.streams import Draw, MemberStreams
from agents.sac import N_CRITICS
from sparse_rl.batched import BatchedLinear
from sparse_rl.controller import SparseGroup

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

# stable_baselines3.sac.policies: log-std clamp and the tanh-squash epsilon of SquashedDiagGaussianDistribution
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
SQUASH_EPSILON = 1e-6


def parse_ent_coef(value: Any) -> tuple[bool, float]:
    """SB3's ``ent_coef``: ``auto`` / ``auto_X`` (learned, initial X, default 1) or a fixed float."""
    if isinstance(value, str) and value.startswith("auto"):
        return True, float(value.split("_")[1]) if "_" in value else 1.0
    return False, float(value)


class PopulationSAC(PopulationAgent):
    """Actor ``obs → h… → 2A`` (mean and log-std in one head), twin critics and targets, per-member entropy coefficient."""

    name = "sac"
    sb3_keys = ("learning_rate", "buffer_size", "batch_size", "tau", "gamma", "learning_starts", "train_freq",
                "gradient_steps", "ent_coef", "target_entropy", "policy_kwargs")  # fmt: skip

    def __init__(
        self,
        k: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int],
        activation: str,
        *,
        gamma: float,
        tau: float,
        learning_rate: float,
        ent_coef: Any,
        target_entropy: float | str,
        optimizer_kwargs: Mapping[str, Any],
        actor_decay: Sequence[float],
        critic_decay: Sequence[float],
        device: torch.device,
        capturable: bool = False,
        action_space: spaces.Box | None = None,
    ) -> None:
        """``action_space``: the env's (actions are squashed to [−1, 1] and rescaled to it; default [−1, 1])."""
        super().__init__()
        self.k, self.obs_dim, self.act_dim, self.device = k, obs_dim, act_dim, device
        self.action_space = action_space if action_space is not None else spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self.gamma, self.tau = gamma, tau
        self.actor = BatchedMLP(
            k, [obs_dim, *hidden, 2 * act_dim], activation, [*sb3_mlp_names("latent_pi.", len(hidden)), "head"], device
        )
        names = sb3_mlp_names("", len(hidden) + 1)
        self.critic = BatchedMLP(N_CRITICS * k, [obs_dim + act_dim, *hidden, 1], activation, names, device)
        self.critic_target = BatchedMLP(N_CRITICS * k, [obs_dim + act_dim, *hidden, 1], activation, names, device)
        self.critic_target.requires_grad_(False)
        self.learn_ent_coef, initial = parse_ent_coef(ent_coef)
        self.log_ent_coef = nn.Parameter(torch.full((k,), math.log(initial), device=device), requires_grad=self.learn_ent_coef)
        self.target_entropy = -float(act_dim) if target_entropy == "auto" else float(target_entropy)
        self.group_layers = {"actor": list(self.actor.layers), "critic": list(self.critic.layers)}
        self.decay = {
            "actor": torch.tensor(list(actor_decay), dtype=torch.float32, device=device),
            "critic": torch.tensor(list(critic_decay), dtype=torch.float32, device=device).repeat_interleave(N_CRITICS),
        }
        self.actor_optimizer = adam(self.actor.parameters(), learning_rate, optimizer_kwargs, capturable)
        self.critic_optimizer = adam(self.critic.parameters(), learning_rate, optimizer_kwargs, capturable)
        # SB3 builds the entropy optimizer as a plain Adam(lr) without the policy's optimizer_kwargs
        self.ent_coef_optimizer = (
            torch.optim.Adam([self.log_ent_coef], lr=learning_rate, capturable=capturable) if self.learn_ent_coef else None
        )

    @classmethod
    def from_config(cls, cfg, net_arch, obs_dim, action_space, decays, device, capturable) -> PopulationSAC:
        if isinstance(net_arch, Mapping) and list(net_arch.get("pi", [])) != list(net_arch.get("qf", [])):
            raise PopulationConfigError("the population engine needs the same hidden widths for actor and critic")
        sb3 = cfg.agent.sb3
        optimizer_kwargs = dict((sb3.get("policy_kwargs") or {}).get("optimizer_kwargs") or {})
        return cls(
            len(decays), obs_dim, int(action_space.shape[0]), hidden_sizes(net_arch, "pi"), cfg.agent.activation,
            gamma=sb3.gamma, tau=sb3.tau, learning_rate=sb3.learning_rate, ent_coef=sb3.get("ent_coef", "auto"),
            target_entropy=sb3.get("target_entropy", "auto"), optimizer_kwargs=optimizer_kwargs,
            actor_decay=[d["actor"] for d in decays], critic_decay=[d["critic"] for d in decays], device=device,
            capturable=capturable, action_space=action_space,
        )  # fmt: skip

    # ----------------------------------------------------------------- networks
    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.critic_target.parameters(), self.critic.parameters()))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {"actor": self.actor_optimizer, "critic": self.critic_optimizer}
        if self.ent_coef_optimizer is not None:
            optimizers["ent_coef"] = self.ent_coef_optimizer
        return optimizers

    def target_layers(self) -> list[BatchedLinear]:
        return list(self.critic_target.layers)

    def member_groups(self, member: int) -> list[SparseGroup]:
        critic, target = {}, {}
        for c in range(N_CRITICS):
            row = N_CRITICS * member + c
            critic.update(self.critic.member_layers(row, self.critic_optimizer, prefix=f"qf{c}."))
            target.update(self.critic_target.member_layers(row, None, prefix=f"qf{c}."))
        return [
            SparseGroup("actor", member_module(self.actor.member_layers(member, self.actor_optimizer))),
            SparseGroup("critic", member_module(critic), target=member_module(target)),
        ]

    def _q(self, critic: BatchedMLP, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Both critics' values ``[K, 2, B, 1]`` of (obs, action) pairs ``[K, B, ·]``."""
        x = torch.cat([obs, actions], dim=-1)
        x = x.unsqueeze(1).expand(-1, N_CRITICS, -1, -1).reshape(N_CRITICS * self.k, *x.shape[1:])
        return critic(x).view(self.k, N_CRITICS, *x.shape[1:-1], 1)

    def _distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs).split(self.act_dim, dim=-1)
        return mean, torch.clamp(log_std, LOG_STD_MIN, LOG_STD_MAX)

    def action_log_prob(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squashed Gaussian sample ``tanh(μ + ε·σ)`` and its log-probability ``[K, B]`` (SB3's formula)."""
        mean, log_std = self._distribution_params(obs)
        std = torch.ones_like(mean) * log_std.exp()
        gaussian = mean + noise * std
        actions = torch.tanh(gaussian)
        log_prob = Normal(mean, std, validate_args=False).log_prob(gaussian).sum(dim=-1)  # a NaN member must not stop the rest
        log_prob = log_prob - torch.sum(torch.log(1 - actions**2 + SQUASH_EPSILON), dim=-1)
        return actions, log_prob

    @torch.no_grad()
    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Actions in [−1, 1] for observations ``[K, B, obs]``: ``tanh(μ)``, or ``tanh(μ + ε·σ)`` with standard-normal
        ``noise`` ``[K, B, A]`` (no log-prob needed)."""
        mean, log_std = self._distribution_params(obs)
        if noise is None:
            return torch.tanh(mean)
        return torch.tanh(torch.addcmul(mean, noise, log_std.exp()))

    def warmup_actions(
        self, action_spaces: Sequence[spaces.Space], streams: MemberStreams, clock: DeviceClock
    ) -> tuple[np.ndarray, np.ndarray]:
        """SB3's warm-up for Box actions: ``sample()``, then ``scale_action`` (the replay's form) and back through
        ``unscale_action`` (what the env gets), with ``BasePolicy``'s formulas."""
        low, high = self.action_space.low, self.action_space.high
        unscaled = np.array([space.sample() for space in action_spaces])
        scaled = 2.0 * ((unscaled - low) / (high - low)) - 1.0
        return low + (0.5 * (scaled + 1.0) * (high - low)), scaled

    def policy_actions(self, obs: torch.Tensor, streams: MemberStreams, clock: DeviceClock) -> torch.Tensor:
        """A policy sample per member (SB3's ``predict(deterministic=False)``), noise from the member's stream."""
        noise = streams.normal(Draw.ACT_NOISE, clock.step, self.act_dim).view(self.k, 1, self.act_dim)
        return self.act(self._obs_tensor(obs), noise)[:, 0]

    def env_actions(self, replay_actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        """SB3's ``unscale_action`` of the [−1, 1] samples; a failed member's (maybe NaN) actions are 0."""
        scaled = np.where(active[:, None], replay_actions, 0.0).astype(np.float32)
        low, high = self.action_space.low, self.action_space.high
        return low + (0.5 * (scaled + 1.0) * (high - low))

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        scaled = self.act(self._obs_tensor(obs))
        scaled = (scaled[:, 0] if obs.ndim == 2 else scaled[:, : obs.shape[1]]).cpu().numpy()  # [K, B, obs]: B episodes
        low, high = self.action_space.low, self.action_space.high
        return low + 0.5 * (np.nan_to_num(scaled) + 1.0) * (high - low)

    @property
    def replay_action_dim(self) -> int:
        return self.act_dim

    # ----------------------------------------------------------------- one gradient step of every member
    def update_noise(self, streams: MemberStreams, step: torch.Tensor | int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The standard-normal noise of the two policy samples (current and next observations), from each member's
        streams at gradient step ``step``."""
        shape = (self.k, batch_size, self.act_dim)
        n = batch_size * self.act_dim
        return (
            streams.normal(Draw.UPDATE_NOISE, step, n).view(shape),
            streams.normal(Draw.UPDATE_NEXT_NOISE, step, n).view(shape),
        )

    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        dones: torch.Tensor,
        noise_pi: torch.Tensor,
        noise_next: torch.Tensor,
        snapshot_dense: bool = False,
        clock_step: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One SAC gradient step per member on batches ``[K, B, ·]`` (rewards, dones ``[K, B, 1]``); losses ``[K]``.
        Every SAC gradient step is a clock step (``clock_stride`` 1)."""
        actions_pi, log_prob = self.action_log_prob(obs, noise_pi)
        log_prob = log_prob.unsqueeze(-1)  # [K, B, 1]
        if self.ent_coef_optimizer is not None:
            ent_coef = torch.exp(self.log_ent_coef.detach())
            ent_coef_loss = -(self.log_ent_coef.view(-1, 1, 1) * (log_prob + self.target_entropy).detach()).mean(dim=(1, 2))
            self.ent_coef_optimizer.zero_grad(set_to_none=True)
            ent_coef_loss.sum().backward()
            self.ent_coef_optimizer.step()
        else:
            ent_coef = torch.exp(self.log_ent_coef.detach())
            ent_coef_loss = torch.zeros_like(ent_coef)
        ent = ent_coef.view(-1, 1, 1)
        with torch.no_grad():
            next_actions, next_log_prob = self.action_log_prob(next_obs, noise_next)
            next_q = self._q(self.critic_target, next_obs, next_actions).min(dim=1).values
            next_q = next_q - ent * next_log_prob.unsqueeze(-1)
            target_q = rewards + (1 - dones) * self.gamma * next_q
        current_q = self._q(self.critic, obs, actions)
        critic_loss = 0.5 * (current_q - target_q.unsqueeze(1)).pow(2).mean(dim=(2, 3)).sum(dim=1)
        self.step_group_("critic", self.critic_optimizer, critic_loss, snapshot_dense)
        min_q_pi = self._q(self.critic, obs, actions_pi).min(dim=1).values
        actor_loss = (ent * log_prob - min_q_pi).mean(dim=(1, 2))
        self.step_group_("actor", self.actor_optimizer, actor_loss, snapshot_dense)
        polyak_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau)
        return {
            "actor_loss": actor_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "ent_coef": ent_coef,
            "ent_coef_loss": ent_coef_loss.detach(),
        }

    def member_problem(self, member: int) -> str | None:
        return None if bool(torch.isfinite(self.log_ent_coef[member])) else "non-finite entropy coefficient"

    # ----------------------------------------------------------------- SB3 export
    def sb3_layer_pairs(self, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
        """The actor's hidden layers, its ``head`` as SB3's ``mu`` and ``log_std``, each twin critic and its target."""
        actor = model.actor
        for layer, linear in zip(self.actor.layers[:-1], sb3_linears(actor.latent_pi)):
            yield layer, member, [linear]
        yield self.actor.layers[-1], member, [actor.mu, actor.log_std]
        for batched, sb3 in ((self.critic, model.critic), (self.critic_target, model.critic_target)):
            for c in range(N_CRITICS):
                for layer, linear in zip(batched.layers, sb3_linears(getattr(sb3, f"qf{c}"))):
                    yield layer, N_CRITICS * member + c, [linear]

    def copy_sb3_extras(self, member: int, model: BaseAlgorithm, to_sb3: bool) -> None:
        """The entropy coefficient (when the model learns one)."""
        if getattr(model, "log_ent_coef", None) is not None:
            ours, theirs = self.log_ent_coef[member : member + 1], model.log_ent_coef.data.view(1)
            (theirs if to_sb3 else ours).copy_(ours if to_sb3 else theirs)
