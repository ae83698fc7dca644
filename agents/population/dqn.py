"""Batched DQN (Mnih et al. 2015) with SB3's update math, for K members at once.

One :meth:`PopulationDQN.update` is, for every member, one iteration of ``stable_baselines3.DQN.train``'s loop (greedy
target from the target network, TD loss, gradient clipping, Adam), parity-tested against it. The loss is a config value:
``huber`` (SB3's, Dopamine's Atari) or ``mse`` (the paper's classic-control DQN, TF-Agents' element-wise squared loss).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.utils import LinearSchedule

from agents.dqn import TD_LOSSES
from agents.population.base import (
    DeviceClock,
    EnvClock,
    LayerPair,
    PopulationAgent,
    adam,
    hidden_sizes,
    polyak_,
    sb3_linears,
)
from agents.population.networks import BatchedMLP, member_module, sb3_mlp_names
from agents.population.streams import Draw, MemberStreams
from sparse_rl.batched import BatchedLinear
from sparse_rl.controller import SparseGroup

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

SB3_DEFAULT_MAX_GRAD_NORM = 10.0  # stable_baselines3.DQN's default


class PopulationDQN(PopulationAgent):
    """Q-network ``obs → h… → n_actions`` and its target, per member; ε-greedy exploration, periodic target sync."""

    name = "dqn"
    sb3_keys = ("learning_rate", "buffer_size", "batch_size", "learning_starts", "target_update_interval", "tau", "gamma",
                "train_freq", "gradient_steps", "exploration_fraction", "exploration_initial_eps", "exploration_final_eps",
                "max_grad_norm", "policy_kwargs")  # fmt: skip

    def __init__(
        self,
        k: int,
        obs_dim: int,
        n_actions: int,
        hidden: Sequence[int],
        activation: str,
        *,
        gamma: float,
        learning_rate: float,
        loss: str,
        max_grad_norm: float | None,
        optimizer_kwargs: Mapping[str, Any],
        q_decay: Sequence[float],
        device: torch.device,
        capturable: bool = False,
        exploration: tuple[float, float, float] = (1.0, 0.05, 0.1),
        target_update_interval: int = 10000,
        tau: float = 1.0,
        action_space: spaces.Discrete | None = None,
    ) -> None:
        """``exploration``: SB3's (initial ε, final ε, fraction); ``target_update_interval``, ``tau``: SB3's target sync
        (defaults: SB3's)."""
        super().__init__()
        if loss not in TD_LOSSES:
            raise ValueError(f"unknown agent.loss '{loss}'; valid choices: {', '.join(sorted(TD_LOSSES))}")
        self.k, self.obs_dim, self.n_actions, self.device = k, obs_dim, n_actions, device
        self.action_space = action_space if action_space is not None else spaces.Discrete(n_actions)
        self.exploration = LinearSchedule(*exploration)
        self.target_update_interval, self.target_tau = max(int(target_update_interval), 1), float(tau)
        self.gamma, self.loss_name, self.max_grad_norm = gamma, loss, max_grad_norm
        names = sb3_mlp_names("", len(hidden) + 1)
        self.q_net = BatchedMLP(k, [obs_dim, *hidden, n_actions], activation, names, device)
        self.q_net_target = BatchedMLP(k, [obs_dim, *hidden, n_actions], activation, names, device)
        self.q_net_target.requires_grad_(False)
        self.group_layers = {"q": list(self.q_net.layers)}
        self.decay = {"q": torch.tensor(list(q_decay), dtype=torch.float32, device=device)}
        self.optimizer = adam(self.q_net.parameters(), learning_rate, optimizer_kwargs, capturable)

    @classmethod
    def from_config(cls, cfg, net_arch, obs_dim, action_space, decays, device, capturable) -> PopulationDQN:
        sb3 = cfg.agent.sb3
        optimizer_kwargs = dict((sb3.get("policy_kwargs") or {}).get("optimizer_kwargs") or {})
        return cls(
            len(decays), obs_dim, int(action_space.n), hidden_sizes(net_arch, "q"), cfg.agent.activation,
            gamma=sb3.gamma, learning_rate=sb3.learning_rate, loss=cfg.agent.loss,
            max_grad_norm=float(sb3.get("max_grad_norm", SB3_DEFAULT_MAX_GRAD_NORM)), optimizer_kwargs=optimizer_kwargs,
            q_decay=[d["q"] for d in decays], device=device, capturable=capturable,
            exploration=(sb3.exploration_initial_eps, sb3.exploration_final_eps, sb3.exploration_fraction),
            target_update_interval=sb3.target_update_interval, tau=sb3.tau, action_space=action_space,
        )  # fmt: skip

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"q": self.optimizer}

    def target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.q_net_target.parameters(), self.q_net.parameters()))

    def target_layers(self) -> list[BatchedLinear]:
        return list(self.q_net_target.layers)

    def member_groups(self, member: int) -> list[SparseGroup]:
        online = self.q_net.member_layers(member, self.optimizer, prefix="q_net.")
        target = self.q_net_target.member_layers(member, None, prefix="q_net.")
        return [SparseGroup("q", member_module(online), target=member_module(target))]

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy actions ``[K, B]`` for observations ``[K, B, obs]``."""
        return self.q_net(obs).argmax(dim=-1)

    def exploration_rate(self, clock: EnvClock) -> float:
        """SB3's ``exploration_rate``: 0 before the first env step, then the linear schedule."""
        return self.exploration(clock.progress_remaining) if clock.num_timesteps > 0 else 0.0

    def exploration_rate_tensor(self, clock: DeviceClock) -> torch.Tensor:
        """:meth:`exploration_rate` as a float64 device scalar (SB3's ``LinearSchedule``, the same double ops)."""
        start, end, fraction = self.exploration.start, self.exploration.end, self.exploration.end_fraction
        elapsed = 1.0 - clock.progress_remaining
        rate = torch.where(elapsed > fraction, end, start + elapsed * (end - start) / fraction)
        return torch.where(clock.step > 0, rate, 0.0)

    def warmup_actions(
        self, action_spaces: Sequence[spaces.Space], streams: MemberStreams, clock: DeviceClock
    ) -> tuple[np.ndarray, np.ndarray]:
        actions = np.array([space.sample() for space in action_spaces])
        return actions, actions.astype(np.float32).reshape(self.k, 1)

    def policy_actions(self, obs: torch.Tensor, streams: MemberStreams, clock: DeviceClock) -> torch.Tensor:
        """ε-greedy (SB3's ``DQN.predict``): member k explores where its stream's coin falls below ε, with a uniform
        action from its stream."""
        greedy = self.act(self._obs_tensor(obs))[:, 0]
        coin = streams.uniform(Draw.EXPLORE, clock.step, 1)[:, 0]
        random = streams.below(Draw.EXPLORE_ACTION, clock.step, 1, self.n_actions)[:, 0]
        actions = torch.where(coin < self.exploration_rate_tensor(clock), random, greedy)
        return actions.to(torch.float32).view(self.k, 1)

    def env_actions(self, replay_actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        return replay_actions[:, 0].astype(np.int64)

    def eval_actions(self, obs: np.ndarray) -> np.ndarray:
        actions = self.act(self._obs_tensor(obs))
        return (actions[:, 0] if obs.ndim == 2 else actions[:, : obs.shape[1]]).cpu().numpy()

    @property
    def replay_action_dim(self) -> int:
        return 1

    def after_env_step(self, clock: EnvClock) -> None:
        """SB3's target sync every ``target_update_interval`` env steps."""
        if clock.num_timesteps % self.target_update_interval == 0:
            self.sync_target(self.target_tau)

    def rollout_log(self, clock: EnvClock) -> dict[str, float]:
        return {"rollout/exploration_rate": self.exploration(clock.progress_remaining)} if clock.num_timesteps > 0 else {}

    @torch.no_grad()
    def sync_target(self, tau: float) -> None:
        """SB3's target update (``polyak_update`` with ``tau``; 1.0 is the hard copy)."""
        polyak_(list(self.q_net_target.parameters()), list(self.q_net.parameters()), tau)

    def sb3_layer_pairs(self, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
        for batched, sb3 in ((self.q_net, model.q_net), (self.q_net_target, model.q_net_target)):
            for layer, linear in zip(batched.layers, sb3_linears(sb3.q_net)):
                yield layer, member, [linear]

    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        dones: torch.Tensor,
        snapshot_dense: bool = False,
        clock_step: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One DQN gradient step per member on batches ``[K, B, ·]`` (actions ``[K, B, 1]`` integer); losses ``[K]``.
        Every DQN gradient step is a clock step (``clock_stride`` 1)."""
        with torch.no_grad():
            next_q = self.q_net_target(next_obs).max(dim=-1, keepdim=True).values
            target_q = rewards + (1 - dones) * self.gamma * next_q
        current_q = torch.gather(self.q_net(obs), dim=-1, index=actions.long())
        loss = TD_LOSSES[self.loss_name](current_q, target_q, reduction="none").mean(dim=(1, 2))
        self.step_group_("q", self.optimizer, loss, snapshot_dense, self.max_grad_norm)
        return {"loss": loss.detach()}
