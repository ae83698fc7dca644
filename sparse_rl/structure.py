"""N:M structured sparsity: in every group of M consecutive weights along a layer's input dimension, N are active.

This is the pattern sparse tensor cores accelerate (2:4 on NVIDIA Ampere and later; Mishra et al. 2021,
"Accelerating Sparse Deep Neural Networks"; Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural
Networks From Scratch"). Groups run along the reduction dimension of the layer's matrix product: the last dimension
of a Linear weight ``[out, in]``, and the flattened ``in·kh·kw`` dimension of a Conv2d weight ``[out, in, kh, kw]``
(its im2col reduction dimension), row by row.

A row whose length ``K`` is not a multiple of ``M`` ends in a partial group of ``r = K mod M`` weights, which keeps
``min(N, r)`` active (the same at most-N-of-a-group rule, never more active than positions). Every full group keeps
exactly ``N``, so a layer's active count is fixed by its shape: :meth:`NMStructure.allocation`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class NMStructure:
    """``n`` active weights in every group of ``m`` consecutive weights along the input dimension."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 1 <= self.n < self.m:
            raise ValueError(f"sparsity.structure {self.n}:{self.m} needs 1 <= N < M (e.g. 2:4, 1:4, 1:8)")

    @classmethod
    def parse(cls, text: str | NMStructure | None) -> NMStructure | None:
        """``"2:4"`` → ``NMStructure(2, 4)``; ``None`` → ``None``; anything else is a one-line ``ValueError``."""
        if text is None or isinstance(text, NMStructure):
            return text
        match = _PATTERN.match(str(text))
        if match is None:
            hint = ""
            if str(text).strip().isdigit():  # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124
                hint = " (a YAML file reads an unquoted N:M as a base-60 number: quote it, structure: '2:4')"
            raise ValueError(
                f"sparsity.structure must be N:M with integers 1 <= N < M (e.g. 2:4, 1:4, 1:8), got '{text}'{hint}"
            )
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    @property
    def density(self) -> float:
        """``N / M``: the density of every layer whose rows are whole groups."""
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        """``1 − N/M``: the sparsity ``sparsity.sparsity`` must state."""
        return 1.0 - self.n / self.m

    @property
    def tag(self) -> str:
        """The run-directory and analysis label fragment, ``2of4`` (no ``:`` in paths)."""
        return f"{self.n}of{self.m}"

    # ------------------------------------------------------------------ group views
    def group_sizes(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Real positions per group of one row, ``[G]`` (``M`` each, the last ``r`` if the row is not whole groups)."""
        row = math.prod(shape[1:])
        sizes = torch.full((math.ceil(row / self.m),), self.m, dtype=torch.long)
        if row % self.m:
            sizes[-1] = row % self.m
        return sizes

    def allocation(self, shape: tuple[int, ...]) -> int:
        """The layer's active count: ``out · Σ_groups min(N, group size)``."""
        return shape[0] * int(self.group_sizes(shape).clamp(max=self.n).sum())

    def grouped(self, tensor: torch.Tensor, fill: float | bool) -> torch.Tensor:
        """``tensor`` ``[out, ...]`` as ``[out, G, M]`` groups, a partial last group padded with ``fill`` (a copy)."""
        rows = tensor.reshape(tensor.shape[0], -1)
        pad = -rows.shape[1] % self.m
        if pad:
            rows = torch.cat([rows, rows.new_full((rows.shape[0], pad), fill)], dim=1)
        return rows.reshape(rows.shape[0], -1, self.m)

    def ungrouped(self, groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`grouped`: drop the padding, restore ``shape``."""
        return groups.reshape(shape[0], -1)[:, : math.prod(shape[1:])].reshape(shape)

    def valid(self, shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
        """``[1, G, M]`` boolean: which grouped positions are real (not padding)."""
        position = torch.arange(self.m, device=device)
        return (position < self.group_sizes(shape).to(device)[:, None]).unsqueeze(0)

    def group_counts(self, mask: torch.Tensor) -> torch.Tensor:
        """Active positions per group, ``[out, G]``."""
        return self.grouped(mask, False).sum(dim=2)

    def top_k(self, scores: torch.Tensor, k: torch.Tensor | int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask (shape of ``scores``): the ``k`` highest-scoring ``candidates`` of every group.

        ``k`` is one count for all groups or ``[out, G]`` per group; a group keeps at most its candidate count.
        ``candidates`` (shape of ``scores``, default all) restricts the choice.
        """
        shape = tuple(scores.shape)
        allowed = self.valid(shape, scores.device)
        if candidates is not None:
            allowed = allowed & self.grouped(candidates, False)
        keys = torch.where(allowed, self.grouped(scores.to(torch.float32), 0.0), float("-inf"))
        order = keys.argsort(dim=2, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(2, order, torch.arange(self.m, device=scores.device).expand_as(order))
        k = torch.as_tensor(k, device=scores.device)
        if k.dim() == 2:
            k = k.unsqueeze(2)
        return self.ungrouped((rank < k) & allowed, shape)

    def random_mask(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """A uniformly random N:M mask of ``shape`` (each group's N positions drawn independently), on the CPU."""
        return self.top_k(torch.rand(shape, generator=generator), self.n)

    def problem(self, mask: torch.Tensor, per_group: int | None = None) -> str | None:
        """Why ``mask`` is not N:M (every group holds ``min(per_group, size)``, ``per_group`` default N), else None."""
        want = self.n if per_group is None else per_group
        expected = self.group_sizes(tuple(mask.shape)).clamp(max=want).to(mask.device)
        counts = self.group_counts(mask)
        bad = (counts != expected).nonzero()
        if len(bad) == 0:
            return None
        row, group = (int(v) for v in bad[0])
        return (
            f"{int(counts[row, group])} active weights in group {group} of row {row}, "
            f"structure {self} wants {int(expected[group])}"
        )
