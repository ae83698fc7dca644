"""A member dimension for the sparse core: batched linear layers whose per-member views are ordinary layers.

A population of K networks with the same architecture stores each layer once, as ``weight[N, out, in]`` (N = K
members × C copies, e.g. C = 2 twin critics), with a boolean ``weight_mask`` of the same shape. Member ``i``'s view
(:class:`MemberLinear`) holds *views* of row ``i`` of the weight, bias, mask, optimizer state and dense-gradient
buffer, so the unchanged :class:`~sparse_rl.controller.TopologyController` (allocation, drop/grow, Adam reset, target
masks, invariants, accounting) runs per member and every in-place write it makes lands in the batched storage.
Topology updates happen outside the (possibly CUDA-graph-captured) training step; gradient masking inside it is one
batched multiply (:func:`mask_gradients_`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparse_rl.masks import MASK_BUFFER, LinearView


class BatchedLinear(nn.Module):
    """``N`` independent linear layers ``in → out`` applied as one ``baddbmm``: ``x[N, B, in] → y[N, B, out]``."""

    def __init__(self, n: int, in_features: int, out_features: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.zeros(n, out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(n, out_features, device=device))
        self.register_buffer(MASK_BUFFER, torch.ones(n, out_features, in_features, dtype=torch.bool, device=device))
        # the mask as a float gradient multiplier, refreshed in place after every topology change (CUDA graphs read it)
        self.register_buffer("grad_multiplier", torch.ones(n, out_features, in_features, device=device), persistent=False)
        # RigL's dense gradient, snapshotted before masking on the step that precedes a topology update
        self.register_buffer("dense_grad", torch.zeros(n, out_features, in_features, device=device), persistent=False)

    def forward(self, x: torch.Tensor, rows: slice | None = None, frozen: bool = False) -> torch.Tensor:
        """``x[N, B, in] → y[N, B, out]``; ``rows``: only these rows (``x`` then has as many); ``frozen``: no gradient
        reaches the weight and bias (only the input's), e.g. a critic in an actor's loss."""
        weight, bias = (self.weight, self.bias) if rows is None else (self.weight[rows], self.bias[rows])
        if frozen:
            weight, bias = weight.detach(), bias.detach()
        # computed as y^T = W x^T + b: the weight gradient then comes out of backward already in the weight's
        # [N, out, in] layout (x W^T would give it transposed, and autograd would copy it into place every step);
        # y is returned as a transposed view, which the next layer's x^T reads contiguously
        return torch.baddbmm(bias.unsqueeze(2), weight, x.transpose(1, 2)).transpose(1, 2)

    @torch.no_grad()
    def refresh_grad_multiplier(self) -> None:
        """Copy the boolean mask into the float multiplier (in place: captured graphs keep its address)."""
        self.grad_multiplier.copy_(getattr(self, MASK_BUFFER))

    def member(self, index: int, optimizer: torch.optim.Optimizer | None) -> MemberLinear:
        """Row ``index`` as a layer the core understands (views only; nothing is copied)."""
        return MemberLinear(self, index, optimizer)

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}"


class MemberLinear(LinearView):
    """One member's view of a :class:`BatchedLinear` row: ``weight``, ``bias``, ``weight_mask`` are views into it.

    ``optimizer_state()`` returns views of the batched optimizer's per-element state (Adam ``exp_avg``,
    ``exp_avg_sq``) at this row, so the controller's optimizer-state reset touches this member only.
    """

    def __init__(self, batched: BatchedLinear, index: int, optimizer: torch.optim.Optimizer | None) -> None:
        super().__init__()
        self.batched = [batched]  # a list: not registered as a submodule (the view owns nothing)
        self.index = index
        self.optimizer = optimizer
        self.weight = batched.weight.detach()[index]
        self.bias = batched.bias.detach()[index]
        self.register_buffer(MASK_BUFFER, getattr(batched, MASK_BUFFER)[index])
        self.dense_grad = batched.dense_grad[index]
        self.in_features, self.out_features = batched.in_features, batched.out_features

    def optimizer_state(self) -> list[torch.Tensor]:
        """Views of every per-element optimizer state tensor of this row (empty before the optimizer's first step)."""
        if self.optimizer is None:
            return []
        state = self.optimizer.state.get(self.batched[0].weight, {})
        shape = self.batched[0].weight.shape
        return [value[self.index] for value in state.values() if torch.is_tensor(value) and value.shape == shape]


def mask_gradients_(layers: Sequence[BatchedLinear], snapshot_dense: bool = False) -> None:
    """Zero the gradients of every layer at inactive positions (one fused multiply); optionally keep the dense copy."""
    with_grad = [layer for layer in layers if layer.weight.grad is not None]
    if not with_grad:
        return
    grads = [layer.weight.grad for layer in with_grad]
    if snapshot_dense:
        torch._foreach_copy_([layer.dense_grad for layer in with_grad], grads)
    torch._foreach_mul_(grads, [layer.grad_multiplier for layer in with_grad])


def add_kernel_decay_(layers: Sequence[BatchedLinear], coefficients: Sequence[torch.Tensor]) -> None:
    """Add ``λ_n · w`` to each kernel gradient (an L2 term on kernels only; ``coefficients[i]`` has shape [N])."""
    for layer, lam in zip(layers, coefficients):
        if layer.weight.grad is not None:
            layer.weight.grad.addcmul_(lam.view(-1, 1, 1), layer.weight.detach())


def nest_modules(named: dict[str, nn.Module]) -> nn.Module:
    """A module tree in which each ``named`` module sits at its dotted name (``latent_pi.0`` → ``root.latent_pi[0]``)."""
    root = nn.Module()
    for name, module in named.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
    return root
