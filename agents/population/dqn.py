"""Batched DQN (Mnih et al. 2015) with SB3's update math, for K members at once.

One :meth:`PopulationDQN.update` is, for every member, one iteration of ``stable_baselines3.DQN.train``'s loop (greedy
target from the target network, TD loss, gradient clipping, Adam), parity-tested against it. The loss is a config value:
``huber`` (SB3's, Dopamine's Atari) or ``mse`` (the paper's classic-control DQN, TF-Agents' element-wise squared loss).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from agents.population.base import PopulationAgent, adam, polyak_
from agents.population.networks import BatchedMLP, member_module, sb3_mlp_names
from sparse_rl.batched import BatchedLinear
from sparse_rl.controller import SparseGroup

LOSSES = {"huber": F.smooth_l1_loss, "mse": F.mse_loss}


class PopulationDQN(PopulationAgent):
    """Q-network ``obs → h… → n_actions`` and its target, per member."""

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
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown agent.loss '{loss}'; valid choices: {', '.join(LOSSES)}")
        self.k, self.obs_dim, self.n_actions = k, obs_dim, n_actions
        self.gamma, self.loss_name, self.max_grad_norm = gamma, loss, max_grad_norm
        names = sb3_mlp_names("", len(hidden) + 1)
        self.q_net = BatchedMLP(k, [obs_dim, *hidden, n_actions], activation, names, device)
        self.q_net_target = BatchedMLP(k, [obs_dim, *hidden, n_actions], activation, names, device)
        self.q_net_target.requires_grad_(False)
        self.group_layers = {"q": list(self.q_net.layers)}
        self.decay = {"q": torch.tensor(list(q_decay), dtype=torch.float32, device=device)}
        self.optimizer = adam(self.q_net.parameters(), learning_rate, optimizer_kwargs, capturable)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"q": self.optimizer}

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

    @torch.no_grad()
    def sync_target(self, tau: float) -> None:
        """SB3's target update (``polyak_update`` with ``tau``; 1.0 is the hard copy)."""
        polyak_(list(self.q_net_target.parameters()), list(self.q_net.parameters()), tau)

    def update(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        next_obs: torch.Tensor,
        dones: torch.Tensor,
        snapshot_dense: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One DQN gradient step per member on batches ``[K, B, ·]`` (actions ``[K, B, 1]`` integer); losses ``[K]``."""
        with torch.no_grad():
            next_q = self.q_net_target(next_obs).max(dim=-1, keepdim=True).values
            target_q = rewards + (1 - dones) * self.gamma * next_q
        current_q = torch.gather(self.q_net(obs), dim=-1, index=actions.long())
        loss = LOSSES[self.loss_name](current_q, target_q, reduction="none").mean(dim=(1, 2))
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.finish_gradients_("q", snapshot_dense, self.max_grad_norm)
        self.optimizer.step()
        return {"loss": loss.detach()}
