"""Sparsity-aware initialisation: ``unit_scaled_init_tf1`` in google-research/rigl ``rigl/rigl_tf2/init_utils.py``
(``init_masks.fixed_sparse_init`` in the RL gin configs; Graesser et al. 2022, Fig 4c and appendix Tables 1-5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse_rl.masks import MaskedLayer, fan_in_out


@torch.no_grad()
def unit_scaled_init_stacked_(layers: Sequence[MaskedLayer], generator: torch.Generator) -> None:
    """Redraw every active weight w_ji of ``layers`` from U(−L, L), L = sqrt(3 / max(1, (fan_in_j + fan_out_i) / 2)).

    ``fan_in_j`` counts active inputs of output unit j, ``fan_out_i`` active outputs of input unit i (conv masks
    summed over space): a per-unit sparse Glorot (fan-avg) uniform. The layers act as one, stacked along their
    output dimension (e.g. SAC's two actor heads as the paper's one output layer): an input unit's fan-out counts
    its active outputs in all of them. Pass one layer for the plain per-layer initialisation.
    """
    mask = torch.cat([layer.mask for layer in layers], dim=0)
    fan_in, fan_out = fan_in_out(mask)
    fan_avg = (fan_in[:, None] + fan_out[None, :]) / 2.0
    limit = torch.sqrt(3.0 / torch.clamp(fan_avg, min=1.0))
    if mask.dim() > 2:
        limit = limit.reshape(*limit.shape, *([1] * (mask.dim() - 2)))
    uniform = torch.rand(mask.shape, generator=generator).to(mask.device) * 2.0 - 1.0
    values = uniform * limit * mask
    start = 0
    for layer in layers:
        rows = layer.weight.shape[0]
        layer.weight.copy_(values[start : start + rows].to(layer.weight.dtype))
        start += rows
