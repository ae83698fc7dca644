"""Shared fixtures: a core config builder and a toy actor/critic with a target critic."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from sparse_rl import SparseGroup, SparsityConfig, TopologyController

# One torch thread per test process: parallel workers with several threads each slow down badly (ecosystem_facts).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _denormals_kept_between_tests():
    """Training turns on ``flush_denormal`` for the process (experiment.numerics): each test starts with it off."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def core_config(method: str, sparsity: float = 0.9, **overrides) -> SparsityConfig:
    """A fully specified core config; values are test values, not defaults."""
    values = dict(
        method=method,
        sparsity=sparsity,
        distribution="erk",
        update_interval=10,
        start_fraction=0.0,
        end_fraction=0.8,
        drop_fraction=0.3,
        drop_fraction_schedule="cosine",
        sparse_init=True,
        prune_power=3,
    )
    values.update(overrides)
    return SparsityConfig(**values)


@dataclass
class ToyAgent:
    """An actor, a twin-free critic, a target critic, Adam optimizers and their controller."""

    actor: nn.Module
    critic: nn.Module
    critic_target: nn.Module
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    controller: TopologyController

    def train_step(self, t: int, batch: int = 16, tau: float = 0.05) -> None:
        """One actor and one critic Adam step on random data, a controller step, then a Polyak target update."""
        obs = torch.randn(batch, 8)
        q = self.critic(torch.cat([obs, self.actor(obs)], dim=1))
        critic_loss = (q - torch.randn_like(q)).pow(2).mean()
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(torch.cat([obs, self.actor(obs)], dim=1)).mean()  # also fills critic grads
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        self.controller.step(t)
        with torch.no_grad():  # SB3's polyak_update: parameters only, never buffers
            for p_t, p in zip(self.critic_target.parameters(), self.critic.parameters()):
                p_t.mul_(1 - tau).add_(tau * p)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_toy_agent(method: str, sparsity: float = 0.8, total_steps: int = 1000, seed: int = 0, **overrides) -> ToyAgent:
    torch.manual_seed(seed)
    actor = mlp([8, 32, 32, 2])
    critic = mlp([10, 32, 32, 1])
    critic_target = copy.deepcopy(critic)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-2, weight_decay=1e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    groups = [
        SparseGroup("actor", actor, actor_opt),
        SparseGroup("critic", critic, critic_opt, target=critic_target),
    ]
    controller = TopologyController(groups, core_config(method, sparsity, **overrides), total_steps, seed)
    controller.init_masks()
    return ToyAgent(actor, critic, critic_target, actor_opt, critic_opt, controller)


@pytest.fixture
def toy_agent_factory():
    return make_toy_agent
