"""A population member ⇄ an SB3 model: member ``k``'s rows of the batched tensors are exactly SB3's layers.

Used to write each member's ``model.zip`` (loadable with its SB3 class's ``load``: ``SAC``, ``DQN``, ``TD3``, ``PPO``;
masks included) and by the parity tests, which copy SB3 models into a population and compare one update of each.
Which batched rows are which SB3 layers is the agent's own (:meth:`~agents.population.base.PopulationAgent.sb3_layer_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from stable_baselines3.common.base_class import BaseAlgorithm

from agents.population.base import LayerPair, PopulationAgent
from sparse_rl.masks import MASK_BUFFER


def layer_pairs(pop: PopulationAgent, member: int, model: BaseAlgorithm) -> Iterator[LayerPair]:
    """Every (batched layer, row) of ``member`` with the SB3 layer(s) it corresponds to."""
    return pop.sb3_layer_pairs(member, model)


@torch.no_grad()
def copy_member(pop: PopulationAgent, member: int, model: BaseAlgorithm, to_sb3: bool) -> None:
    """Copy weights, biases, masks (and the agent's extras, e.g. SAC's entropy coefficient) between ``member`` and
    ``model``."""
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
    pop.copy_sb3_extras(member, model, to_sb3)
    if not to_sb3:
        pop.refresh_masks()
