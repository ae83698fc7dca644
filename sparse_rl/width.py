"""Equal-parameter dense baselines and their mirror, "Sparse Wide".

Source: Graesser et al. 2022 (arXiv 2206.10369), whose "Dense" points are width-scaled dense networks at the
sparse networks' parameter counts; width scaling as ``width`` in google-research/rigl ``rigl/rl/dqn_agents.py``.

The paper compares a sparse network at sparsity ``s`` with a *narrower dense* network whose parameter
count matches the sparse network's active count. Widths scale every hidden layer (and, for the Nature
CNN, every conv's channels) by ``ceil(n · width)``; inputs and outputs are unchanged. The mirror
(Sparse-IFT's *Sparse Wide*) widens the sparse network until its active count equals the default dense
network's count.

Counting convention everywhere: kernels plus biases (the paper's parameter logging counts active mask
entries plus all biases), with ``bias`` explicit so kernel-only counts (the paper's figure axes) are one
flag away. Biases are never masked, so a network at sparsity ``s`` has ``round((1 − s)·kernels) + biases``
active parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

# Bisection stops when the width bracket is narrower than this; far below the 1/512 spacing between the
# widths at which any hidden size of a standard network changes.
WIDTH_TOLERANCE = 1e-9
MAX_BISECTION_STEPS = 200
# Floating-point slack so that e.g. 512 · 0.25 stays 128 under ceil (not 129 from round-off).
_CEIL_SLACK = 1e-9


class ParamCount(NamedTuple):
    """Kernel (weight) and bias parameter counts of a network."""

    kernels: int
    biases: int

    def total(self, bias: bool = True) -> int:
        """Kernels plus biases, or kernels only when ``bias`` is False."""
        return self.kernels + (self.biases if bias else 0)

    def __add__(self, other: object) -> ParamCount:  # type: ignore[override]
        if not isinstance(other, ParamCount):
            return NotImplemented
        return ParamCount(self.kernels + other.kernels, self.biases + other.biases)


class MLPSpec(NamedTuple):
    """A fully connected network ``n_in → hidden… → n_out`` at width 1."""

    n_in: int
    hidden: Sequence[int]
    n_out: int


class WidthSolution(NamedTuple):
    """A solved width multiplier, the resulting hidden sizes per network, its count and the relative mismatch."""

    width: float
    hidden: list[list[int]]
    count: int
    mismatch: float  # (count − target) / target


def scale_units(n: int, width: float) -> int:
    """``max(1, ceil(n · width))``: width scaling of one layer (``_scale_width`` in rigl ``rigl/rl/dqn_agents.py``)."""
    return max(1, math.ceil(n * width - _CEIL_SLACK))


def scaled_hidden(hidden: Sequence[int], width: float) -> list[int]:
    """Hidden sizes scaled by ``width`` with ``ceil``, at least one unit each."""
    return [scale_units(h, width) for h in hidden]


def mlp_params(n_in: int, hidden: Sequence[int], n_out: int) -> ParamCount:
    """Kernel and bias counts of an MLP ``n_in → hidden… → n_out``."""
    sizes = [n_in, *hidden, n_out]
    kernels = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return ParamCount(kernels, sum(sizes[1:]))


def mlps_params(nets: Sequence[MLPSpec | tuple[int, Sequence[int], int]], width: float = 1.0) -> ParamCount:
    """Summed counts of several MLPs (e.g. SAC's actor and both critics) with every hidden layer scaled by ``width``."""
    total = ParamCount(0, 0)
    for n_in, hidden, n_out in nets:
        total = total + mlp_params(n_in, scaled_hidden(hidden, width), n_out)
    return total


def _conv_out(size: int, kernel: int, stride: int, same_padding: bool) -> int:
    if same_padding:
        return math.ceil(size / stride)
    return (size - kernel) // stride + 1


# SB3's NatureCNN (Mnih et al. 2015): (out_channels, kernel, stride) per conv, then a 512-unit linear layer.
NATURE_CNN_CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
NATURE_CNN_HIDDEN = 512


def nature_cnn_params(
    in_channels: int,
    n_actions: int,
    width: float = 1.0,
    obs_hw: tuple[int, int] = (84, 84),
    same_padding: bool = False,
) -> ParamCount:
    """Kernel and bias counts of the Nature-DQN Q network: SB3's NatureCNN plus a linear Q head.

    SB3 pads its convs with 0 (flatten 7·7·64 = 3,136 at 84×84); the paper's Dopamine network uses 'same'
    padding (11·11·64 = 7,744, ≈4.05M parameters): set ``same_padding`` to count that one.
    """
    h, w = obs_hw
    kernels = biases = 0
    channels = in_channels
    for out_channels, kernel, stride in NATURE_CNN_CONVS:
        out = scale_units(out_channels, width)
        kernels += kernel * kernel * channels * out
        biases += out
        h, w = _conv_out(h, kernel, stride, same_padding), _conv_out(w, kernel, stride, same_padding)
        channels = out
    head = mlp_params(h * w * channels, [scale_units(NATURE_CNN_HIDDEN, width)], n_actions)
    return ParamCount(kernels, biases) + head


def sparse_active_count(params: ParamCount, sparsity: float, bias: bool = True) -> int:
    """Active parameters at ``sparsity``: ``round((1 − s)·kernels)`` plus the (never masked) biases if ``bias``."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return round((1.0 - sparsity) * params.kernels) + (params.biases if bias else 0)


def solve_width(
    count_fn: Callable[[float], int],
    target: int,
    lo: float = 1e-3,
    hi: float = 1.0,
    tol: float = WIDTH_TOLERANCE,
    max_steps: int = MAX_BISECTION_STEPS,
) -> float:
    """Width in ``[lo, hi]`` whose ``count_fn(width)`` is closest to ``target``, by bisection.

    ``count_fn`` must be non-decreasing in the width (a step function for integer layer sizes). Of the two
    steps around the target, the nearer one wins (ties go to the smaller network); the width returned is
    the middle of that step, so rounding elsewhere cannot tip it onto a neighbouring step.
    """
    if lo > hi:
        raise ValueError(f"need lo <= hi, got lo={lo}, hi={hi}")
    lo_bound, hi_bound = lo, hi
    if count_fn(hi) <= target:
        best = hi
    elif count_fn(lo) >= target:
        best = lo
    else:
        lo, hi = _bisect(lambda w: count_fn(w) < target, lo, hi, tol, max_steps)
        best = lo if target - count_fn(lo) <= count_fn(hi) - target else hi
    count = count_fn(best)
    start = (
        _bisect(lambda w: count_fn(w) < count, lo_bound, best, tol, max_steps)[1] if count_fn(lo_bound) < count else lo_bound
    )
    end = (
        _bisect(lambda w: count_fn(w) <= count, best, hi_bound, tol, max_steps)[0] if count_fn(hi_bound) > count else hi_bound
    )
    return 0.5 * (start + end)


def _bisect(below: Callable[[float], bool], lo: float, hi: float, tol: float, max_steps: int) -> tuple[float, float]:
    """Shrink ``[lo, hi]`` (``below(lo)`` true, ``below(hi)`` false) to width ``tol`` around the switch point."""
    for _ in range(max_steps):
        if hi - lo <= tol:
            break
        mid = 0.5 * (lo + hi)
        if below(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def _solution(
    nets: Sequence[MLPSpec | tuple[int, Sequence[int], int]], width: float, target: int, bias: bool
) -> WidthSolution:
    count = mlps_params(nets, width).total(bias)
    hidden = [scaled_hidden(h, width) for _, h, _ in nets]
    return WidthSolution(width, hidden, count, (count - target) / target)


def solve_dense_width_for_mlp(
    nets: Sequence[MLPSpec | tuple[int, Sequence[int], int]], sparsity: float, bias: bool = True
) -> WidthSolution:
    """Width of a dense copy of ``nets`` whose count matches their active count at ``sparsity`` (the paper's "Dense").

    ``nets`` are scaled together, e.g. ``[(17, [256, 256], 12), (23, [256, 256], 1), (23, [256, 256], 1)]``
    for SAC on Walker2d (actor and both critics).
    """
    target = sparse_active_count(mlps_params(nets), sparsity, bias)
    width = solve_width(lambda w: mlps_params(nets, w).total(bias), target)
    return _solution(nets, width, target, bias)


def widen_for_active_count(
    params_fn: Callable[[float], ParamCount], sparsity: float, bias: bool = True, target: int | None = None
) -> float:
    """Width ≥ 1 at which the sparse network's active count matches ``target`` ("Sparse Wide", Sparse-IFT).

    ``params_fn(width)`` gives the kernel/bias counts of the network at a width multiplier; ``target``
    defaults to the dense count at width 1. The upper bracket doubles until it reaches the target.
    """
    if target is None:
        target = params_fn(1.0).total(bias)

    def active(width: float) -> int:
        return sparse_active_count(params_fn(width), sparsity, bias)

    hi = 1.0
    for _ in range(MAX_BISECTION_STEPS):
        if active(hi) >= target:
            break
        hi *= 2.0
    else:
        raise ValueError(f"no width reaches {target} active parameters at sparsity {sparsity}")
    return solve_width(active, target, lo=1.0, hi=hi)


def widen_mlp_for_sparsity(
    nets: Sequence[MLPSpec | tuple[int, Sequence[int], int]], sparsity: float, bias: bool = True
) -> WidthSolution:
    """Sparse Wide for MLPs: the widened sparse ``nets`` whose active count matches their dense count at width 1."""
    target = mlps_params(nets).total(bias)
    width = widen_for_active_count(lambda w: mlps_params(nets, w), sparsity, bias, target)
    count = sparse_active_count(mlps_params(nets, width), sparsity, bias)
    hidden = [scaled_hidden(h, width) for _, h, _ in nets]
    return WidthSolution(width, hidden, count, (count - target) / target)
