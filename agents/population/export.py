"""A population member ⇄ an SB3 model: member ``k``'s rows of the batched tensors are exactly SB3's layers.

Used to write each member's ``model.zip`` (loadable with ``SAC.load`` / ``DQN.load``, masks included) and by the
parity tests, which copy SB3 models into a population and compare one update of each.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from torch import nn

from agents.population.base import PopulationAgent
from agents.population.dqn import PopulationDQN
from agents.population.sac import N_CRITICS, PopulationSAC
from sparse_rl.batched import BatchedLinear
from sparse_rl.masks import MASK_BUFFER

LayerPair = tuple[BatchedLinear, int, list[nn.Linear]]  # batched layer, row, SB3 linears whose output rows concatenate to it


def _sequential_linears(seq: nn.Sequential) -> list[nn.Linear]:
    return [m for m in seq if isinstance(m, nn.Linear)]


def layer_pairs(pop: PopulationAgent, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
    """Every (batched layer, row) of ``member`` with the SB3 layer(s) it corresponds to."""
    if isinstance(pop, PopulationSAC):
        actor = model.actor
        for layer, linear in zip(pop.actor.layers[:-1], _sequential_linears(actor.latent_pi)):
            yield layer, member, [linear]
        yield pop.actor.layers[-1], member, [actor.mu, actor.log_std]
        for batched, sb3 in ((pop.critic, model.critic), (pop.critic_target, model.critic_target)):
            for c in range(N_CRITICS):
                for layer, linear in zip(batched.layers, _sequential_linears(getattr(sb3, f"qf{c}"))):
                    yield layer, N_CRITICS * member + c, [linear]
    elif isinstance(pop, PopulationDQN):
        for batched, sb3 in ((pop.q_net, model.q_net), (pop.q_net_target, model.q_net_target)):
            for layer, linear in zip(batched.layers, _sequential_linears(sb3.q_net)):
                yield layer, member, [linear]
    else:
        raise TypeError(f"no SB3 layout for {type(pop).__name__}")


@torch.no_grad()
def copy_member(pop: PopulationAgent, member: int, model: BaseAlgorithm, to_sb3: bool) -> None:
    """Copy weights, biases, masks (and SAC's entropy coefficient) between ``member`` and ``model``."""
    for batched, row, linears in layer_pairs(pop, member, model):
        start = 0
        for linear in linears:
            rows = slice(start, start + linear.weight.shape[0])
            pairs = [(batched.weight[row, rows], linear.weight), (batched.bias[row, rows], linear.bias)]
            if hasattr(linear, MASK_BUFFER):
                pairs.append((getattr(batched, MASK_BUFFER)[row, rows], getattr(linear, MASK_BUFFER)))
            for ours, theirs in pairs:
                (theirs if to_sb3 else ours).copy_(ours if to_sb3 else theirs)
            start = rows.stop
    if isinstance(pop, PopulationSAC) and getattr(model, "log_ent_coef", None) is not None:
        ours, theirs = pop.log_ent_coef[member : member + 1], model.log_ent_coef.data.view(1)
        (theirs if to_sb3 else ours).copy_(ours if to_sb3 else theirs)
    if not to_sb3:
        pop.refresh_masks()
