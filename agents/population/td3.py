"""Batched TD3 (Fujimoto et al. 2018) with SB3's update math, for K members at once.

One :meth:`PopulationTD3.update` is, for every member, exactly one iteration of ``stable_baselines3.TD3.train``'s loop:
the twin critics' step on the smoothed target (target-policy noise clipped, next action clipped to [−1, 1]), and on
a *clock step* (SB3: ``_n_updates % policy_delay == 0``) the actor's step on ``−Q₁(s, μ(s))`` followed by the Polyak
update of both targets; parity-tested against it. The trainer knows which gradient steps are clock steps from
:attr:`clock_stride` (= ``policy_delay``), so the topology clock advances at actor steps as on the SB3 path
(``agents.td3.SPEC``: ``clock_optimizer`` is the actor's, ``clock_stride`` is ``policy_delay``; docs/design.md
decisions 31 and 40). The target-policy noise is an input, so the update is a pure function of tensors.

Exploration is SB3's ``NormalActionNoise(0, agent.exploration_noise)`` added in the [−1, 1] action scale and
clipped (``OffPolicyAlgorithm._sample_action``), during warm-up too, drawn from each member's stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces

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


class PopulationTD3(PopulationAgent):
    """Deterministic actor ``obs → h… → A`` (tanh) and its target, twin critics and their targets."""

    name = "td3"
    sb3_keys = ("learning_rate", "buffer_size", "batch_size", "tau", "gamma", "learning_starts", "train_freq",
                "gradient_steps", "policy_delay", "target_policy_noise", "target_noise_clip", "policy_kwargs")  # fmt: skip

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
        policy_delay: int,
        target_policy_noise: float,
        target_noise_clip: float,
        exploration_noise: float | None,
        optimizer_kwargs: Mapping[str, Any],
        actor_decay: Sequence[float],
        critic_decay: Sequence[float],
        device: torch.device,
        capturable: bool = False,
        action_space: spaces.Box | None = None,
    ) -> None:
        """``action_space``: the env's (the actor's tanh output is rescaled to it; default [−1, 1]);
        ``exploration_noise``: the std of the Gaussian action noise (``None``: SB3 without ``action_noise``)."""
        super().__init__()
        self.k, self.obs_dim, self.act_dim, self.device = k, obs_dim, act_dim, device
        self.action_space = action_space if action_space is not None else spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self.gamma, self.tau = gamma, tau
        self.clock_stride = int(policy_delay)
        self.target_policy_noise, self.target_noise_clip = target_policy_noise, target_noise_clip
        self.exploration_noise = exploration_noise
        actor_names = sb3_mlp_names("mu.", len(hidden) + 1)  # SB3's Actor.mu: create_mlp(..., squash_output=True)
        self.actor = BatchedMLP(k, [obs_dim, *hidden, act_dim], activation, actor_names, device)
        self.actor_target = BatchedMLP(k, [obs_dim, *hidden, act_dim], activation, actor_names, device)
        names = sb3_mlp_names("", len(hidden) + 1)
        self.critic = BatchedMLP(N_CRITICS * k, [obs_dim + act_dim, *hidden, 1], activation, names, device)
        self.critic_target = BatchedMLP(N_CRITICS * k, [obs_dim + act_dim, *hidden, 1], activation, names, device)
        self.actor_target.requires_grad_(False)
        self.critic_target.requires_grad_(False)
        self.group_layers = {"actor": list(self.actor.layers), "critic": list(self.critic.layers)}
        self.decay = {
            "actor": torch.tensor(list(actor_decay), dtype=torch.float32, device=device),
            "critic": torch.tensor(list(critic_decay), dtype=torch.float32, device=device).repeat_interleave(N_CRITICS),
        }
        self.actor_optimizer = adam(self.actor.parameters(), learning_rate, optimizer_kwargs, capturable)
        self.critic_optimizer = adam(self.critic.parameters(), learning_rate, optimizer_kwargs, capturable)
        # SB3 logs the actor loss of the last train() call that stepped the actor: kept across critic-only steps
        self.register_buffer("last_actor_loss", torch.full((k,), float("nan"), device=device))

    @classmethod
    def from_config(cls, cfg, net_arch, obs_dim, action_space, decays, device, capturable) -> PopulationTD3:
        if isinstance(net_arch, Mapping) and list(net_arch.get("pi", [])) != list(net_arch.get("qf", [])):
            raise PopulationConfigError("the population engine needs the same hidden widths for actor and critic")
        sb3 = cfg.agent.sb3
        optimizer_kwargs = dict((sb3.get("policy_kwargs") or {}).get("optimizer_kwargs") or {})
        noise = cfg.agent.get("exploration_noise")
        return cls(
            len(decays), obs_dim, int(action_space.shape[0]), hidden_sizes(net_arch, "pi"), cfg.agent.activation,
            gamma=sb3.gamma, tau=sb3.tau, learning_rate=sb3.learning_rate, policy_delay=int(sb3.policy_delay),
            target_policy_noise=float(sb3.target_policy_noise), target_noise_clip=float(sb3.target_noise_clip),
            exploration_noise=None if noise is None else float(noise), optimizer_kwargs=optimizer_kwargs,
            actor_decay=[d["actor"] for d in decays], critic_decay=[d["critic"] for d in decays], device=device,
            capturable=capturable, action_space=action_space,
        )  # fmt: skip

    # ----------------------------------------------------------------- networks
    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            *zip(self.actor_target.parameters(), self.actor.parameters()),
            *zip(self.critic_target.parameters(), self.critic.parameters()),
        ]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def target_layers(self) -> list[BatchedLinear]:
        return [*self.actor_target.layers, *self.critic_target.layers]

    def member_groups(self, member: int) -> list[SparseGroup]:
        critic, target = {}, {}
        for c in range(N_CRITICS):
            row = N_CRITICS * member + c
            critic.update(self.critic.member_layers(row, self.critic_optimizer, prefix=f"qf{c}."))
            target.update(self.critic_target.member_layers(row, None, prefix=f"qf{c}."))
        return [
            SparseGroup(
                "actor",
                member_module(self.actor.member_layers(member, self.actor_optimizer)),
                target=member_module(self.actor_target.member_layers(member, None)),
            ),
            SparseGroup("critic", member_module(critic), target=member_module(target)),
        ]

    def _q(self, critic: BatchedMLP, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Both critics' values ``[K, 2, B, 1]`` of (obs, action) pairs ``[K, B, ·]``."""
        x = torch.cat([obs, actions], dim=-1)
        x = x.unsqueeze(1).expand(-1, N_CRITICS, -1, -1).reshape(N_CRITICS * self.k, *x.shape[1:])
        return critic(x).view(self.k, N_CRITICS, *x.shape[1:-1], 1)

    @staticmethod
    def _mu(actor: BatchedMLP, obs: torch.Tensor) -> torch.Tensor:
        """SB3's ``Actor.forward``: the MLP and its tanh (``squash_output``), actions in [−1, 1]."""
        return torch.tanh(actor(obs))

    # ----------------------------------------------------------------- acting
    def _explore(self, scaled: torch.Tensor, streams: MemberStreams, step: torch.Tensor) -> torch.Tensor:
        """SB3's ``np.clip(scaled_action + action_noise(), -1, 1)``, the noise N(0, σ) from each member's stream."""
        if self.exploration_noise is None:
            return scaled
        noise = streams.normal(Draw.ACT_NOISE, step, self.act_dim) * self.exploration_noise
        return torch.clamp(scaled + noise, -1.0, 1.0)

    def warmup_actions(
        self, action_spaces: Sequence[spaces.Space], streams: MemberStreams, clock: DeviceClock
    ) -> tuple[np.ndarray, np.ndarray]:
        """SB3's warm-up for Box actions: ``sample()``, ``scale_action``, the exploration noise (SB3 adds it in
        warm-up too), then ``unscale_action`` for the env, with ``BasePolicy``'s formulas."""
        low, high = self.action_space.low, self.action_space.high
        unscaled = np.array([space.sample() for space in action_spaces])
        scaled = 2.0 * ((unscaled - low) / (high - low)) - 1.0
        if self.exploration_noise is not None:
            sample = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)
            scaled = self._explore(sample, streams, clock.step).cpu().numpy()
        return low + (0.5 * (scaled + 1.0) * (high - low)), scaled

    def policy_actions(self, obs: torch.Tensor, streams: MemberStreams, clock: DeviceClock) -> torch.Tensor:
        """The actor's action plus the member's exploration noise, clipped to [−1, 1]."""
        with torch.no_grad():
            scaled = self._mu(self.actor, self._obs_tensor(obs))[:, 0]
        return self._explore(scaled, streams, clock.step)

    def env_actions(self, replay_actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        """SB3's ``unscale_action`` of the [−1, 1] actions; a failed member's (maybe NaN) actions are 0."""
        scaled = np.where(active[:, None], replay_actions, 0.0).astype(np.float32)
        low, high = self.action_space.low, self.action_space.high
        return low + (0.5 * (scaled + 1.0) * (high - low))

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            scaled = self._mu(self.actor, self._obs_tensor(obs))
        scaled = (scaled[:, 0] if obs.ndim == 2 else scaled[:, : obs.shape[1]]).cpu().numpy()  # [K, B, obs]: B episodes
        low, high = self.action_space.low, self.action_space.high
        return low + 0.5 * (np.nan_to_num(scaled) + 1.0) * (high - low)

    @property
    def replay_action_dim(self) -> int:
        return self.act_dim

    # ----------------------------------------------------------------- one gradient step of every member
    def update_noise(self, streams: MemberStreams, step: torch.Tensor | int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The standard-normal draws of the target-policy smoothing noise ``[K, B, A]`` at gradient step ``step``."""
        n = batch_size * self.act_dim
        return (streams.normal(Draw.UPDATE_NOISE, step, n).view(self.k, batch_size, self.act_dim),)

    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        dones: torch.Tensor,
        noise: torch.Tensor,
        snapshot_dense: bool = False,
        clock_step: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One TD3 gradient step per member on batches ``[K, B, ·]`` (rewards, dones ``[K, B, 1]``): the critics'
        step, and on a ``clock_step`` (SB3: ``_n_updates % policy_delay == 0``) the actor's step and the Polyak
        update of both targets. ``noise``: standard normals ``[K, B, A]`` (SB3: ``normal_(0, target_policy_noise)``).
        """
        with torch.no_grad():
            smoothing = (noise * self.target_policy_noise).clamp(-self.target_noise_clip, self.target_noise_clip)
            next_actions = (self._mu(self.actor_target, next_obs) + smoothing).clamp(-1, 1)
            next_q = self._q(self.critic_target, next_obs, next_actions).min(dim=1).values
            target_q = rewards + (1 - dones) * self.gamma * next_q
        current_q = self._q(self.critic, obs, actions)
        critic_loss = (current_q - target_q.unsqueeze(1)).pow(2).mean(dim=(2, 3)).sum(dim=1)  # SB3: Σ mse, no 0.5
        self.step_group_("critic", self.critic_optimizer, critic_loss, snapshot_dense)
        if clock_step:
            # SB3's critic.q1_forward: the first twin's rows only, and no critic gradient (SB3 computes one and the
            # next critic step's zero_grad discards it)
            q1 = self.critic(torch.cat([obs, self._mu(self.actor, obs)], dim=-1), rows=slice(0, None, N_CRITICS), frozen=True)
            actor_loss = -q1.mean(dim=(1, 2))
            self.step_group_("actor", self.actor_optimizer, actor_loss, snapshot_dense)
            polyak_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau)
            polyak_(list(self.actor_target.parameters()), list(self.actor.parameters()), self.tau)
            self.last_actor_loss.copy_(actor_loss.detach())
        return {"actor_loss": self.last_actor_loss, "critic_loss": critic_loss.detach()}

    # ----------------------------------------------------------------- SB3 export
    def sb3_layer_pairs(self, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
        """The actor's ``mu`` and its target, each twin critic and its target."""
        for batched, sb3 in ((self.actor, model.actor), (self.actor_target, model.actor_target)):
            for layer, linear in zip(batched.layers, sb3_linears(sb3.mu)):
                yield layer, member, [linear]
        for batched, sb3 in ((self.critic, model.critic), (self.critic_target, model.critic_target)):
            for c in range(N_CRITICS):
                for layer, linear in zip(batched.layers, sb3_linears(getattr(sb3, f"qf{c}"))):
                    yield layer, N_CRITICS * member + c, [linear]
