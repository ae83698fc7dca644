"""What batched SAC and DQN share: optimizers over batched parameters, masked and decayed gradients, member groups."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sparse_rl.batched import BatchedLinear, add_kernel_decay_, mask_gradients_
from sparse_rl.controller import SparseGroup


def adam(params: Sequence[torch.Tensor], lr: float, kwargs: Mapping[str, Any], capturable: bool) -> torch.optim.Adam:
    """Adam as the SB3 path builds it (``optimizer_kwargs``), minus weight decay (applied to kernels only, explicitly)."""
    options = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    if capturable:
        options["capturable"] = True
    return torch.optim.Adam(list(params), lr=lr, **options)


class PopulationAgent(nn.Module):
    """A population's networks and optimizers; subclasses define the update (one gradient step of every member)."""

    k: int
    group_layers: dict[str, list[BatchedLinear]]  # group name -> its batched layers (all rows)
    decay: dict[str, torch.Tensor]  # group name -> per-row kernel decay coefficients [N]

    def sparse_layers(self) -> list[BatchedLinear]:
        return [layer for layers in self.group_layers.values() for layer in layers]

    def finish_gradients_(self, group: str, snapshot_dense: bool, max_grad_norm: float | None = None) -> None:
        """Mask (RigL: snapshot the dense gradient first), clip per member on masked gradients, add kernel L2."""
        layers = self.group_layers[group]
        mask_gradients_(layers, snapshot_dense)
        if max_grad_norm is not None and math.isfinite(max_grad_norm):
            clip_member_grad_norm_(self.group_parameters(group), self.k, max_grad_norm)
        add_kernel_decay_(layers, [self.decay[group]] * len(layers))

    def group_parameters(self, group: str) -> list[torch.Tensor]:
        """Weights and biases of a group's layers (leading dimension: rows)."""
        return [p for layer in self.group_layers[group] for p in (layer.weight, layer.bias)]

    @torch.no_grad()
    def refresh_masks(self) -> None:
        """After topology changes: float gradient multipliers follow the boolean masks (in place)."""
        for layer in self.sparse_layers():
            layer.refresh_grad_multiplier()
        for layer in self.target_layers():
            layer.refresh_grad_multiplier()

    def target_layers(self) -> list[BatchedLinear]:
        return []

    def member_groups(self, member: int) -> list[SparseGroup]:
        """The core's groups of member ``member``: views into the batched tensors (see :mod:`sparse_rl.batched`)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError


@torch.no_grad()
def clip_member_grad_norm_(params: Sequence[torch.Tensor], k: int, max_norm: float) -> torch.Tensor:
    """Per-member ``clip_grad_norm_`` (torch's formula) over parameters whose leading dim is ``k × copies``."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.stack([g.reshape(k, -1).pow(2).sum(dim=1) for g in grads]).sum(dim=0)
    norms = squares.sqrt()
    coefficients = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coefficients.view(k, *([1] * (g.dim() - 1))).repeat_interleave(g.shape[0] // k, dim=0))
    return norms


@torch.no_grad()
def polyak_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], tau: float) -> None:
    """SB3's ``polyak_update`` on batched tensors: ``target ← (1 − τ)·target + τ·source`` (same float ops)."""
    torch._foreach_mul_(list(targets), 1 - tau)
    torch._foreach_add_(list(targets), list(sources), alpha=tau)
