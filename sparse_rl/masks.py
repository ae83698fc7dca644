"""Masks on the weights of ``nn.Linear`` and ``nn.Conv2d`` layers.

Implementation choice (docs/design.md §2, option (a)): the forward pass stays a plain dense layer. Inactive weights
are kept exactly zero *in place*; the mask lives as a boolean buffer ``weight_mask`` on the layer (so it is
part of the module's ``state_dict`` and survives save/load); gradients are masked in an optimizer step
pre-hook installed by the :class:`~sparse_rl.controller.TopologyController`. Biases are never masked.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

MASK_BUFFER = "weight_mask"


class LinearView(nn.Module):
    """Base of a linear layer that is a view into batched storage (:class:`sparse_rl.batched.MemberLinear`)."""


MASKABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, LinearView)


def find_maskable_layers(
    module: nn.Module, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> dict[str, nn.Module]:
    """Linear/Conv2d submodules of ``module`` whose qualified name matches an ``include`` glob and no ``exclude`` glob.

    Returned in ``named_modules`` order (input layer first for sequential networks).
    """
    layers: dict[str, nn.Module] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, MASKABLE_TYPES) and name_matches(name, include, exclude):
            layers[name] = sub
    return layers


def name_matches(name: str, include: Sequence[str] = ("*",), exclude: Sequence[str] = ()) -> bool:
    """Whether the qualified module ``name`` matches an ``include`` glob and no ``exclude`` glob."""
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)


def attach_mask(layer: nn.Module) -> torch.Tensor:
    """The layer's boolean ``weight_mask`` buffer, created all-ones (dense) if absent."""
    mask = getattr(layer, MASK_BUFFER, None)
    if mask is None:
        layer.register_buffer(MASK_BUFFER, torch.ones_like(layer.weight, dtype=torch.bool))
        mask = getattr(layer, MASK_BUFFER)
    return mask


def fan_in_out(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Active incoming connections per output unit and outgoing per input unit (conv masks summed over space)."""
    per_pair = mask.reshape(mask.shape[0], mask.shape[1], -1).sum(dim=2) if mask.dim() > 2 else mask
    per_pair = per_pair.to(torch.float32)
    return per_pair.sum(dim=1), per_pair.sum(dim=0)


@dataclass
class MaskedLayer:
    """One masked layer of a group: its module, its allocated final active count, an optional dense-gradient buffer."""

    name: str
    module: nn.Module
    allocated: int = 0
    dense_grad: torch.Tensor | None = field(default=None, repr=False)
    output_positions: int | None = None  # spatial output positions per sample (1 for Linear); measured at first forward
    # N:M recipes (sparse_rl.nm_recipes): the dense weight the optimizer steps, and the factor β of the pruned
    # positions in the layer's effective weight ``latent ⊙ where(mask, 1, β)``; None outside a recipe's window
    latent: torch.Tensor | None = field(default=None, repr=False)
    applied_factor: float = 0.0
    _soft_mask: torch.Tensor | None = field(default=None, repr=False)
    _soft_mask_key: tuple[int, int, float] | None = field(default=None, repr=False)
    _inverse_mask: torch.Tensor | None = field(default=None, repr=False)
    _inverse_mask_key: tuple[int, int] | None = field(default=None, repr=False)
    _float_mask: torch.Tensor | None = field(default=None, repr=False)
    _float_mask_key: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def mask(self) -> torch.Tensor:
        return attach_mask(self.module)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.module.weight.shape)

    @property
    def total(self) -> int:
        return self.module.weight.numel()

    @property
    def active(self) -> int:
        return int(self.mask.sum().item())

    def optimizer_state(self, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
        """The per-element optimizer state tensors of this layer's weight (Adam ``exp_avg``, ``exp_avg_sq``, ...).

        A layer that is a view into batched storage (:class:`~sparse_rl.batched.MemberLinear`) supplies its own views.
        """
        own = getattr(self.module, "optimizer_state", None)
        if callable(own):
            return own()
        if optimizer is None or self.weight not in optimizer.state:
            return []
        state = optimizer.state[self.weight]
        return [value for value in state.values() if torch.is_tensor(value) and value.shape == self.weight.shape]

    def new_dense_grad(self) -> torch.Tensor:
        """A buffer for RigL's dense gradient: the module's own (a batched view) or a fresh one."""
        own = getattr(self.module, "dense_grad", None)
        return own if torch.is_tensor(own) else torch.zeros_like(self.weight)

    @property
    def bias_count(self) -> int:
        bias = getattr(self.module, "bias", None)
        return 0 if bias is None else bias.numel()

    def float_mask(self) -> torch.Tensor:
        """The mask in the weight's dtype (a gradient multiplier), cached until the mask tensor changes."""
        mask = self.module._buffers[MASK_BUFFER]  # direct: this runs on every gradient step
        key = (id(mask), mask._version)  # in-place writes (copy_, load_state_dict) bump _version
        if self._float_mask_key != key:
            self._float_mask = mask.to(self.module.weight.dtype)
            self._float_mask_key = key
        return self._float_mask

    def dense_weight(self) -> torch.Tensor:
        """The weight a magnitude criterion ranks: the recipe's dense latent while one runs, else the layer's own."""
        return (self.module.weight if self.latent is None else self.latent).detach()

    def soft_mask(self, factor: float) -> torch.Tensor:
        """``where(mask, 1, factor)`` in the weight's dtype, cached per mask and factor. Computed as
        ``mask·(1 − factor) + factor`` (a CPU ``where`` on a bool mask is ~30× slower): exactly ``factor`` off the
        mask; on it ``fl(fl(1 − b) + b)``, which is 1 for every factor tried, and is set to 1 if it ever is not."""
        if factor == 0.0:
            return self.float_mask()
        mask = self.module._buffers[MASK_BUFFER]
        key = (id(mask), mask._version, factor)
        if self._soft_mask_key != key:
            if self._soft_mask is None or self._soft_mask.shape != mask.shape:
                self._soft_mask = torch.empty(mask.shape, dtype=self.module.weight.dtype, device=mask.device)
            torch.mul(self.float_mask(), 1.0 - factor, out=self._soft_mask).add_(factor)
            on_mask = torch.ones((), dtype=self._soft_mask.dtype).mul_(1.0 - factor).add_(factor)  # same rounding
            if float(on_mask) != 1.0:  # never seen; kept exact whatever the factor
                self._soft_mask.masked_fill_(mask, 1.0)
            self._soft_mask_key = key
        return self._soft_mask

    def inverse_float_mask(self) -> torch.Tensor:
        """``1 − mask`` in the weight's dtype (SR-STE's pruned positions), cached until the mask tensor changes."""
        mask = self.module._buffers[MASK_BUFFER]
        key = (id(mask), mask._version)
        if self._inverse_mask_key != key:
            self._inverse_mask = (~mask).to(self.module.weight.dtype)
            self._inverse_mask_key = key
        return self._inverse_mask

    @torch.no_grad()
    def apply_latent(self, factor: float) -> None:
        """Write the effective weight ``latent ⊙ where(mask, 1, factor)`` into the layer and record ``factor``."""
        torch.mul(self.latent, self.soft_mask(factor), out=self.module.weight)
        self.applied_factor = factor

    def set_mask(self, new_mask: torch.Tensor) -> None:
        """Install ``new_mask`` and zero the weights it switches off."""
        with torch.no_grad():
            self.mask.copy_(new_mask)
            self.module.weight.mul_(self.mask)
