"""Parameter and FLOP counts (RigL paper's convention, Evci et al. 2020, appendix H).

Forward FLOPs = 2 × multiply-accumulates of the active weights (times output positions for convs); a
training step costs ≈ 3 × forward (backward ≈ 2 × forward). RigL additionally computes a dense gradient on
its update steps: (3·f_S·ΔT + 2·f_S + f_D) / (ΔT + 1) per step.
"""

from __future__ import annotations

FLOPS_PER_MAC = 2
TRAINING_FORWARD_MULTIPLIER = 3  # forward + backward (≈ 2 × forward)


def forward_flops(active_weights: int, output_positions: int) -> int:
    """Forward FLOPs per sample of one layer."""
    return FLOPS_PER_MAC * active_weights * output_positions


def training_flops_per_sample(
    forward_sparse: float, forward_dense: float, needs_dense_gradient: bool, update_interval: int
) -> float:
    """Average training FLOPs per sample per step; RigL's dense-gradient steps amortised over ``update_interval``."""
    if not needs_dense_gradient:
        return TRAINING_FORWARD_MULTIPLIER * forward_sparse
    dt = update_interval
    return (TRAINING_FORWARD_MULTIPLIER * forward_sparse * dt + 2 * forward_sparse + forward_dense) / (dt + 1)
