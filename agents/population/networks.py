"""Batched MLPs for a population: K members' networks stored layer by layer as ``[N, out, in]`` tensors.

Layer names follow stable-baselines3's modules (``latent_pi.0``, ``qf1.2``, ``q_net.4``) so a member exports to an SB3
policy by copying; the one exception is the SAC actor's output, kept as **one** ``2A × h`` layer ``head`` exactly as in
the paper's actor (ERK sees it as one layer), exported as SB3's ``mu`` (rows ``:A``) and ``log_std`` (rows ``A:``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sparse_rl.batched import BatchedLinear, MemberLinear, nest_modules


class BatchedMLP(nn.Module):
    """``len(sizes) - 1`` :class:`BatchedLinear` layers of ``n`` rows with an activation between them (none after the last)."""

    def __init__(self, n: int, sizes: Sequence[int], activation: str, names: Sequence[str], device: torch.device) -> None:
        super().__init__()
        if len(names) != len(sizes) - 1:
            raise ValueError(f"need {len(sizes) - 1} layer names, got {list(names)}")
        self.names = list(names)
        self.layers = nn.ModuleList(BatchedLinear(n, a, b, device) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = getattr(nn, activation)()

    def forward(self, x: torch.Tensor, rows: slice | None = None, frozen: bool = False) -> torch.Tensor:
        """``rows``, ``frozen``: see :meth:`BatchedLinear.forward`. The layers' ``forward`` is called directly (they
        carry no module hooks): acting runs this at every env step, where ``Module.__call__`` is a visible cost."""
        for i, layer in enumerate(self.layers):
            x = layer.forward(x, rows, frozen)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return _GradInOutputLayout.apply(x) if torch.is_grad_enabled() else x  # (no backward: nothing to lay out)

    def member_layers(self, row: int, optimizer: torch.optim.Optimizer | None, prefix: str = "") -> dict[str, MemberLinear]:
        """Row ``row`` of every layer, keyed by its SB3 name."""
        return {f"{prefix}{name}": layer.member(row, optimizer) for name, layer in zip(self.names, self.layers)}


class _GradInOutputLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient on in the output's own memory layout.

    A ``BatchedLinear`` output is a transposed view (``[N, B, out]`` over ``[N, out, B]``); autograd would hand its
    gradient back with the strides of the consumer's gradient, and for ``out = 1`` (critic heads) the CPU ``bmm``
    then sums a member's weight gradient in an order that depends on ``N`` (measured: torch 2.13, MKL). In the
    output's layout every member's gradient is summed the same way at any population size (issue 20).
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        ctx.layout = (y.shape, y.stride())
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        shape, stride = ctx.layout
        return torch.empty_strided(shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def sb3_mlp_names(prefix: str, n_layers: int) -> list[str]:
    """SB3's ``create_mlp`` names: Linear modules at even indices of a Sequential (``q_net.0``, ``q_net.2``, ...)."""
    return [f"{prefix}{2 * i}" for i in range(n_layers)]


def member_module(layers: Mapping[str, MemberLinear]) -> nn.Module:
    """A module tree holding one member's layer views at their SB3 names (for :class:`~sparse_rl.SparseGroup`)."""
    return nest_modules(dict(layers))
