"""Sparsity-aware initialisation (paper §3.4; ``unit_scaled_init_tf1`` in google-research/rigl ``init_utils.py``)."""

from __future__ import annotations

import torch

from sparse_rl.masks import MaskedLayer, fan_in_out


@torch.no_grad()
def unit_scaled_init_(layer: MaskedLayer, generator: torch.Generator) -> None:
    """Redraw every active weight w_ji from U(−L, L), L = sqrt(3 / max(1, (fan_in_j + fan_out_i) / 2)).

    ``fan_in_j`` counts active inputs of output unit j, ``fan_out_i`` active outputs of input unit i (conv masks
    summed over space): a per-unit sparse Glorot (fan-avg) uniform.
    """
    mask = layer.mask
    fan_in, fan_out = fan_in_out(mask)
    fan_avg = (fan_in[:, None] + fan_out[None, :]) / 2.0
    limit = torch.sqrt(3.0 / torch.clamp(fan_avg, min=1.0))
    if mask.dim() > 2:
        limit = limit.reshape(*limit.shape, *([1] * (mask.dim() - 2)))
    uniform = torch.rand(mask.shape, generator=generator).to(mask.device) * 2.0 - 1.0
    weight = layer.weight
    weight.copy_((uniform * limit).to(weight.dtype) * mask)
