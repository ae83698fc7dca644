"""Sparse Iso-FLOP Transformations of a Linear layer: Sparse Parallel, Sparse Factorized, Sparse Doped.

Source: Thangarasa et al. 2023, "Sparse-IFT: Sparse Iso-FLOP Transformations for Maximizing Training
Efficiency" (arXiv:2303.11525), §2 and Table 1: each transformation replaces a dense layer ``W ∈ R^{d_out×d_in}``
by sparse (or sparse plus dense low-rank) layers, parameterised by one sparsity ``s``, whose FLOPs equal the
dense layer's. The fourth member, Sparse Wide, widens whole networks (:mod:`sparse_rl.width`).

Sizes (``s`` the sparsity; MACs per sample, biases and the few additions of the sum not counted, as in
:mod:`sparse_rl.accounting`):

- **parallel**: ``k = round(1 / (1 − s))`` parallel ``d_in → d_out`` branches, outputs summed;
- **factorized**: ``W ≈ V·U`` with ``U: d_in → r``, ``V: r → d_out``, ``r = ceil(d_in·d_out / ((1 − s)(d_in + d_out)))``
  (no activation between the factors);
- **doped**: ``W ≈ V·U + S`` with a *dense* low-rank product of rank ``r = floor(s·d_in·d_out / (d_in + d_out))``
  and a sparse residual ``S: d_in → d_out`` (the FLOPs the sparsity frees pay for the low-rank product).

Iso-FLOP by construction: every sub-layer carries its own fixed active count (:data:`FIXED_ACTIVE`, which the
:class:`~sparse_rl.controller.TopologyController` allocates instead of the distribution's), and the counts of one
transformed layer sum to exactly ``d_in · d_out``. So the rounding of ``k`` and ``r`` moves the sub-layers'
sparsity a little off ``s`` but never the FLOPs. The one bias of the dense layer is kept once (first branch,
``V``, ``S``), so the biases are unchanged too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from sparse_rl.registry import Registry

FIXED_ACTIVE = "fixed_active"  # attribute of a sub-layer: its active count, allocated instead of the distribution's
IFT_NONE = "none"


def _split(total: int, sizes: list[int]) -> list[int]:
    """``total`` split over layers of ``sizes`` positions in proportion to them (largest remainder), each ≤ its size."""
    whole = sum(sizes)
    shares = [total * size / whole for size in sizes]
    counts = [math.floor(share) for share in shares]
    order = sorted(range(len(sizes)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return [min(count, size) for count, size in zip(counts, sizes)]


def _fix(layer: nn.Linear, active: int) -> nn.Linear:
    setattr(layer, FIXED_ACTIVE, int(active))
    return layer


class IsoFlopLinear(nn.Module):
    """A dense ``d_in → d_out`` Linear layer transformed (Sparse-IFT); ``dense_macs = d_in · d_out``."""

    kind: ClassVar[str]

    def __init__(self, in_features: int, out_features: int, sparsity: float) -> None:
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"Sparse-IFT sparsity must be in [0, 1), got {sparsity}")
        self.in_features, self.out_features, self.sparsity = in_features, out_features, sparsity
        self.dense_macs = in_features * out_features

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.kind}, sparsity={self.sparsity:g}"


class SparseParallel(IsoFlopLinear):
    """``k = round(1/(1 − s))`` sparse branches summed; their active counts sum to ``d_in · d_out``."""

    kind = "parallel"

    def __init__(self, in_features: int, out_features: int, sparsity: float, bias: bool = True) -> None:
        super().__init__(in_features, out_features, sparsity)
        k = max(1, round(1.0 / (1.0 - sparsity)))
        counts = _split(self.dense_macs, [self.dense_macs] * k)
        self.branches = nn.ModuleList(
            _fix(nn.Linear(in_features, out_features, bias=bias and i == 0), count) for i, count in enumerate(counts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class SparseFactorized(IsoFlopLinear):
    """``V·U`` with a wider inner dimension ``r``; both factors sparse, active counts summing to ``d_in · d_out``."""

    kind = "factorized"

    def __init__(self, in_features: int, out_features: int, sparsity: float, bias: bool = True) -> None:
        super().__init__(in_features, out_features, sparsity)
        inner = max(1, math.ceil(self.dense_macs / ((1.0 - sparsity) * (in_features + out_features)) - 1e-9))
        count_u, count_v = _split(self.dense_macs, [in_features * inner, inner * out_features])
        self.u = _fix(nn.Linear(in_features, inner, bias=False), count_u)
        self.v = _fix(nn.Linear(inner, out_features, bias=bias), count_v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.u(x))


class SparseDoped(IsoFlopLinear):
    """A dense rank-``r`` product ``V·U`` plus a sparse residual ``S`` with the rest, ``d_in·d_out − r(d_in + d_out)``."""

    kind = "doped"

    def __init__(self, in_features: int, out_features: int, sparsity: float, bias: bool = True) -> None:
        super().__init__(in_features, out_features, sparsity)
        rank = math.floor(sparsity * self.dense_macs / (in_features + out_features) + 1e-9)
        self.rank = rank
        self.low_u = _fix(nn.Linear(in_features, rank, bias=False), in_features * rank) if rank else None
        self.low_v = _fix(nn.Linear(rank, out_features, bias=False), rank * out_features) if rank else None
        self.sparse = _fix(
            nn.Linear(in_features, out_features, bias=bias), self.dense_macs - rank * (in_features + out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sparse(x)
        if self.low_u is not None:
            out = out + self.low_v(self.low_u(x))
        return out


IFT_TRANSFORMS: Registry[Callable[..., IsoFlopLinear]] = Registry("Sparse-IFT transformation")
for _cls in (SparseParallel, SparseFactorized, SparseDoped):
    IFT_TRANSFORMS.register(_cls.kind)(_cls)


def transform_linear(linear: nn.Linear, kind: str, sparsity: float) -> IsoFlopLinear:
    """The Sparse-IFT ``kind`` of ``linear`` (fresh weights, default init, on its device and dtype)."""
    block = IFT_TRANSFORMS.get(kind)(linear.in_features, linear.out_features, sparsity, bias=linear.bias is not None)
    return block.to(device=linear.weight.device, dtype=linear.weight.dtype)


def hidden_linears(module: nn.Module, depth: int | None = None) -> list[str]:
    """Qualified names of the Linear layers of ``module`` that an activation follows in their ``nn.Sequential``
    (the hidden layers; output layers and heads are left alone), at most the first ``depth`` of each Sequential.

    ``depth`` (the number of hidden layers the MLP was built with) tells an output layer followed by a squashing
    ``Tanh`` (SB3's ``create_mlp(..., squash_output=True)``: TD3's actor) from a hidden layer followed by its
    activation; the two look alike when the activation is ``Tanh`` too."""
    names = []
    for prefix, sub in module.named_modules():
        if not isinstance(sub, nn.Sequential):
            continue
        children = list(sub.named_children())
        found = [
            f"{prefix}.{name}" if prefix else name
            for (name, child), (_, after) in zip(children[:-1], children[1:])
            if type(child) is nn.Linear and not isinstance(after, (nn.Linear, IsoFlopLinear))
        ]
        names += found if depth is None else found[:depth]
    return names


def transform_hidden_layers_(module: nn.Module, kind: str, sparsity: float, depth: int | None = None) -> list[str]:
    """Replace every hidden Linear layer of ``module`` (:func:`hidden_linears`, ``depth`` per Sequential) by its
    Sparse-IFT ``kind``; returns their names. ``kind`` ``none`` leaves the module unchanged."""
    if kind == IFT_NONE:
        return []
    names = hidden_linears(module, depth)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, transform_linear(getattr(parent, child), kind, sparsity))
    return names


def iso_flop_blocks(module: nn.Module) -> dict[str, IsoFlopLinear]:
    """The transformed layers of ``module`` by qualified name."""
    return {name: sub for name, sub in module.named_modules() if isinstance(sub, IsoFlopLinear)}


def fixed_active(layer: nn.Module) -> int | None:
    """A sub-layer's fixed active count (:data:`FIXED_ACTIVE`), ``None`` for a plain layer."""
    return getattr(layer, FIXED_ACTIVE, None)
