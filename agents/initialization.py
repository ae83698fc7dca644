"""Weight initialisation schemes (placeholder until the fidelity branch lands; replaced by its version)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def init_linear_(weight: torch.Tensor, bias: torch.Tensor | None, generator: torch.Generator | None = None, *, scheme: str, **params) -> None:
    """Initialise a linear layer's ``weight [..., out, in]`` and ``bias [..., out]`` in place."""
    fan_out, fan_in = weight.shape[-2], weight.shape[-1]
    if scheme == "torch_default":
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        weight.uniform_(-bound, bound, generator=generator)
        if bias is not None:
            bias.uniform_(-bound, bound, generator=generator)
    elif scheme == "glorot_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        weight.uniform_(-bound, bound, generator=generator)
        if bias is not None:
            bias.zero_()
    else:
        raise KeyError(f"unknown init scheme '{scheme}'; valid choices: glorot_uniform, torch_default")
