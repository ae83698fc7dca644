"""How much sparsity each layer of a group gets: uniform, ER and ERK.

Sources: Evci et al. 2020 (RigL, arXiv 1911.11134) §3; ``get_sparsities_erdos_renyi`` in google-research/rigl
``rigl/sparse_utils.py``. Graesser et al. 2022 (arXiv 2206.10369) use ERK throughout (uniform only in Fig 4a).

Every distribution returns integer active counts per layer whose sum is exactly ``round((1 - s) * N)`` for
the group's maskable weight total ``N``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from sparse_rl.registry import Registry

Shape = Sequence[int]
DensityFn = Callable[[Sequence[Shape], float], list[float]]

DISTRIBUTIONS: Registry[DensityFn] = Registry("distribution")


def _numel(shape: Shape) -> int:
    return math.prod(shape)


@DISTRIBUTIONS.register("uniform")
def uniform_densities(shapes: Sequence[Shape], sparsity: float) -> list[float]:
    """Every layer at density ``1 - s``."""
    return [1.0 - sparsity for _ in shapes]


def _raw_er(shape: Shape, with_kernel: bool) -> float:
    """Unnormalised ER(K) density of a torch weight shape (out, in[, kh, kw])."""
    dims = list(shape) if with_kernel else list(shape[:2])
    return sum(dims) / math.prod(dims)


def _scaled_densities(shapes: Sequence[Shape], sparsity: float, with_kernel: bool) -> list[float]:
    """Densities ∝ raw ER(K) score; layers whose density would exceed 1 become dense and ε is re-solved.

    Follows ``get_sparsities_erdos_renyi`` in google-research/rigl ``sparse_utils.py``.
    """
    sizes = [_numel(s) for s in shapes]
    raw = [_raw_er(s, with_kernel) for s in shapes]
    budget = (1.0 - sparsity) * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        remaining = budget - sum(sizes[i] for i in dense)
        denom = sum(raw[i] * sizes[i] for i in free)
        if not free or denom == 0:
            break
        eps = remaining / denom
        over = [i for i in free if eps * raw[i] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda i: raw[i]))
    return [1.0 if i in dense else min(1.0, eps * raw[i]) for i in range(len(shapes))]


@DISTRIBUTIONS.register("er")
def er_densities(shapes: Sequence[Shape], sparsity: float) -> list[float]:
    """Erdős–Rényi: density ∝ (n_in + n_out) / (n_in · n_out); kernel dims ignored."""
    return _scaled_densities(shapes, sparsity, with_kernel=False)


@DISTRIBUTIONS.register("erk")
def erk_densities(shapes: Sequence[Shape], sparsity: float) -> list[float]:
    """Erdős–Rényi-Kernel: density ∝ (n_in + n_out + k_h + k_w) / (n_in · n_out · k_h · k_w)."""
    return _scaled_densities(shapes, sparsity, with_kernel=True)


def integer_allocation(shapes: Sequence[Shape], densities: Sequence[float], sparsity: float) -> list[int]:
    """Integer active counts per layer summing exactly to ``round((1 - s) * N)`` (largest-remainder rounding).

    Every layer keeps at least one active weight when the budget allows it.
    """
    sizes = [_numel(s) for s in shapes]
    target = round((1.0 - sparsity) * sum(sizes))
    ideal = [d * n for d, n in zip(densities, sizes)]
    counts = [min(n, math.floor(x)) for x, n in zip(ideal, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: ideal[i] - math.floor(ideal[i]), reverse=True)
    # Distribute the remainder by largest fractional part, then anywhere with room (floating-point slack).
    for i in order + sorted(range(len(sizes)), key=lambda i: sizes[i] - counts[i], reverse=True):
        if sum(counts) >= target:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
    while sum(counts) > target:  # only if floats overshot
        i = max(range(len(sizes)), key=lambda i: counts[i] - ideal[i])
        counts[i] -= 1
    for i in range(len(sizes)):  # a layer with no active weight cuts the network: borrow one from the largest
        if counts[i] == 0 and target >= len(sizes):
            donor = max(range(len(sizes)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def allocate(distribution: str, shapes: Sequence[Shape], sparsity: float) -> list[int]:
    """Active counts per layer for ``distribution`` at group sparsity ``sparsity`` (exact total)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    densities = DISTRIBUTIONS.get(distribution)(shapes, sparsity)
    return integer_allocation(shapes, densities, sparsity)


def joint_shapes(shapes: Sequence[Shape], joint: Sequence[Sequence[int]]) -> tuple[list[Shape], list[list[int]]]:
    """The virtual layers a distribution sees when the layers of each ``joint`` set act as one.

    A joint set's layers must agree in every dimension but the first (outputs): they are stacked along it, e.g.
    SAC's ``mu`` and ``log_std`` heads (A×256 each) become the paper's one 2A×256 output layer. Returns the
    virtual shapes and, per virtual layer, the indices of the real layers it stands for (in order).
    """
    seen: set[int] = set()
    for members in joint:
        if len(members) < 2:
            raise ValueError(f"a joint set needs at least two layers, got {list(members)}")
        for i in members:
            if not 0 <= i < len(shapes) or i in seen:
                raise ValueError(f"joint layer index {i} is out of range or in two joint sets ({len(shapes)} layers)")
            seen.add(i)
        tails = {tuple(shapes[i][1:]) for i in members}
        if len(tails) != 1:
            raise ValueError(
                f"joint layers must share all but their first dimension, got {[tuple(shapes[i]) for i in members]}"
            )
    first_of = {min(members): list(members) for members in joint}
    virtual: list[Shape] = []
    parts: list[list[int]] = []
    for i, shape in enumerate(shapes):
        if i in first_of:
            members = first_of[i]
            virtual.append((sum(shapes[j][0] for j in members), *shape[1:]))
            parts.append(members)
        elif i not in seen:
            virtual.append(tuple(shape))
            parts.append([i])
    return virtual, parts


def split_count(count: int, sizes: Sequence[int]) -> list[int]:
    """Split ``count`` over parts of ``sizes`` in proportion to their sizes (largest remainder; exact total)."""
    total = sum(sizes)
    ideal = [count * n / total for n in sizes]
    counts = [math.floor(x) for x in ideal]
    for i in sorted(range(len(sizes)), key=lambda i: ideal[i] - counts[i], reverse=True)[: count - sum(counts)]:
        counts[i] += 1
    return counts


def allocate_joint(
    distribution: str, shapes: Sequence[Shape], sparsity: float, joint: Sequence[Sequence[int]] = ()
) -> list[int]:
    """Like :func:`allocate`, with the layers of each ``joint`` set allocated as one virtual layer.

    The virtual layer's count is split over its layers in proportion to their sizes (equal halves for SAC's
    ``mu``/``log_std`` heads), so every real layer has its own fixed count. Without ``joint`` this is
    :func:`allocate`.
    """
    virtual, parts = joint_shapes(shapes, joint)
    counts = [0] * len(shapes)
    for members, count in zip(parts, allocate(distribution, virtual, sparsity)):
        for i, c in zip(members, split_count(count, [_numel(shapes[j]) for j in members])):
            counts[i] = c
    return counts
