"""Training diagnostics of a network group, torch only: dormant units, effective rank, gradient SNR, mask churn.

Pure functions on tensors and modules; the SB3 adapter that feeds them batches and per-sample losses is
``agents/diagnostics_callback.py``. Sources: dormant neurons (Sokar et al. 2023, ReDo), srank (Kumar et al. 2021),
gradient signal-to-noise ratio (Graesser et al. 2022, arXiv 2206.10369, Fig 5: |mean| / std of per-sample gradients,
averaged over parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


def _unit_scores(activations: torch.Tensor) -> torch.Tensor:
    """Mean |activation| per unit over the batch (and over space for conv maps: units are channels, dim 1)."""
    if activations.dim() < 2:
        raise ValueError(f"activations must be (batch, units, ...), got shape {tuple(activations.shape)}")
    dims = [0, *range(2, activations.dim())]
    return activations.detach().abs().float().mean(dim=dims)


def dormant_fraction(activations: torch.Tensor, tau: float) -> float:
    """Share of a layer's units that are tau-dormant (Sokar et al. 2023, ReDo, Def. 3.1).

    Unit i is dormant when ``E|h_i| / mean_k E|h_k| <= tau`` over the batch; a layer whose every activation is 0
    is all dormant.
    """
    scores = _unit_scores(activations)
    layer_mean = scores.mean()
    if layer_mean <= 0:
        return 1.0
    return float((scores / layer_mean <= tau).float().mean())


def srank(features: torch.Tensor, delta: float) -> int:
    """Effective rank (Kumar et al. 2021, Implicit Under-Parameterization): the least k whose top-k singular values of
    the (batch, features) matrix hold a ``1 - delta`` share of their sum; 0 for an all-zero matrix."""
    if features.dim() != 2:
        features = features.reshape(features.shape[0], -1)
    singular = torch.linalg.svdvals(features.detach().double())
    total = singular.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(singular, dim=0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(1.0 - delta, dtype=cumulative.dtype)).item()) + 1


class LossModule(nn.Module):
    """An ``nn.Module`` whose forward is ``loss_fn(batch)`` and whose parameters are ``net``'s (prefixed ``net.``):
    lets ``functional_call`` swap ``net``'s parameters under a loss that calls any of its methods."""

    def __init__(self, net: nn.Module, loss_fn: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(batch)


def per_sample_grads(
    module: nn.Module,
    params: Mapping[str, torch.Tensor],
    loss_fn: Callable[[Any], torch.Tensor],
    batch: Any,
) -> dict[str, torch.Tensor]:
    """Gradients of ``loss_fn`` w.r.t. ``params`` (names in ``module``) for every sample of ``batch``, each
    (batch, *shape): ``torch.func`` (``functional_call`` + ``vmap(grad)``), no Python loop.

    ``batch`` is a tensor or a (nested) tuple/dict of tensors whose dim 0 indexes samples; ``loss_fn(batch)`` returns
    the per-sample losses (batch,) and may use ``module`` any way (its parameters are swapped for ``params`` while it
    runs; it sees one sample at a time, with a leading dimension of 1). It may not draw random numbers (``vmap``
    refuses): pass the noise it needs in the batch.
    """
    wrapper = LossModule(module, loss_fn)
    detached = {f"net.{name}": value.detach() for name, value in params.items()}

    def loss_of(p: dict[str, torch.Tensor], sample: Any) -> torch.Tensor:
        one = torch.utils._pytree.tree_map(lambda x: x.unsqueeze(0), sample)
        return functional_call(wrapper, p, (one,), strict=False).reshape(())

    with torch.no_grad():  # grad() differentiates w.r.t. ``params`` anyway; no graph for the module's other parameters
        grads = vmap(grad(loss_of), in_dims=(None, 0))(detached, batch)
    return {name.removeprefix("net."): value for name, value in grads.items()}


class _Moments:
    """Mean and sample std over samples of per-parameter gradients, accumulated over chunks of samples (bounded
    memory): shifted sums (shift = the first chunk's mean) in float64, each chunk's sums as matrix-vector products
    (``Tensor.std(dim=0)`` is ~5x slower on CPU)."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: dict[str, torch.Tensor] = {}
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.shapes: dict[str, torch.Size] = {}

    def add(self, grads: Mapping[str, torch.Tensor], consume: bool) -> None:
        """Add (chunk, *shape) gradients; ``consume`` overwrites them instead of copying."""
        for name, g in grads.items():
            flat = g.reshape(g.shape[0], -1)
            ones = g.new_ones(1, g.shape[0])
            if name not in self.shift:
                self.shapes[name] = g.shape[1:]
                self.shift[name] = (ones @ flat) / g.shape[0]
                zero = torch.zeros(flat.shape[1], dtype=torch.float64, device=g.device)
                self.sums[name] = (zero, zero.clone())
            centred = flat if consume else flat.clone()
            centred.sub_(self.shift[name])
            first, second = self.sums[name]
            first += (ones @ centred).reshape(-1).double()
            second += (ones @ centred.square_()).reshape(-1).double()
        self.count += next(iter(grads.values())).shape[0] if grads else 0

    def mean_std(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = self.sums[name]
        mean = first / self.count
        var = (second - self.count * mean.square()) / max(self.count - 1, 1) if self.count > 1 else torch.zeros_like(mean)
        dtype, shape = self.shift[name].dtype, self.shapes[name]
        return (self.shift[name].reshape(-1) + mean.to(dtype)).view(shape), var.clamp_min(0).sqrt().to(dtype).view(shape)

    def snr_and_means(self, masks: Mapping[str, torch.Tensor | None]) -> tuple[float, dict[str, torch.Tensor]]:
        ratios, means = [], {}
        for name in self.sums:
            mean, std = self.mean_std(name)
            ratio = torch.where(std > 0, mean.abs() / std.clamp_min(torch.finfo(std.dtype).tiny), torch.zeros_like(mean))
            mask = masks.get(name)
            ratios.append(ratio[mask] if mask is not None else ratio.reshape(-1))
            means[name] = mean * mask if mask is not None else mean
        values = torch.cat([r.reshape(-1) for r in ratios]) if ratios else torch.zeros(0)
        return (float(values.mean()) if values.numel() else 0.0), means


def snr_from_grads(grads: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor | None]) -> float:
    """Mean over active parameters of ``|mean| / std`` of per-sample gradients (Graesser et al. 2022, Fig 5).

    ``grads[name]`` is (batch, *shape); ``masks[name]`` a boolean mask of the shape (``None``: all active). The std
    is the sample std over the batch; a parameter with std 0 has SNR 0 (its gradient carries no signal).
    """
    moments = _Moments()
    moments.add(grads, consume=False)
    return moments.snr_and_means(masks)[0]


def gradient_snr(
    module: nn.Module,
    params: Mapping[str, torch.Tensor],
    loss_fn: Callable[[Any], torch.Tensor],
    batch: Any,
    masks: Mapping[str, torch.Tensor | None],
    chunk_size: int = 64,
) -> tuple[float, float]:
    """Gradient SNR over the active parameters (:func:`snr_from_grads` of :func:`per_sample_grads`) and the norm of
    the batch-mean gradient restricted to them; per-sample gradients of ``chunk_size`` samples at a time (memory:
    chunk_size x parameters floats, e.g. 64 x 1.7M for the Nature CNN)."""
    leaves = torch.utils._pytree.tree_leaves(batch)
    moments = _Moments()
    for start in range(0, leaves[0].shape[0], chunk_size):
        part = torch.utils._pytree.tree_map(lambda x, s=slice(start, start + chunk_size): x[s], batch)
        moments.add(per_sample_grads(module, params, loss_fn, part), consume=True)
    snr, means = moments.snr_and_means(masks)
    return snr, norm(list(means.values()))


def norm(tensors: Sequence[torch.Tensor]) -> float:
    """The L2 norm of all ``tensors`` taken together."""
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])))


def mask_churn(
    initial: Sequence[torch.Tensor], current: Sequence[torch.Tensor], previous: Sequence[torch.Tensor] | None = None
) -> tuple[float, float]:
    """(share of active connections absent from the initial masks, share new since ``previous``, the masks before
    the last topology update; 0 without one). Masks are per layer, boolean; shares are over all layers together."""
    active = sum(int(c.sum()) for c in current)
    if active == 0:
        return 0.0, 0.0
    from_initial = sum(int((c & ~i).sum()) for c, i in zip(current, initial, strict=True))
    if previous is None:
        return from_initial / active, 0.0
    from_previous = sum(int((c & ~p).sum()) for c, p in zip(current, previous, strict=True))
    return from_initial / active, from_previous / active
