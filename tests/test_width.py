"""Equal-parameter dense widths and Sparse Wide, checked against torch modules and Graesser et al. 2022."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sparse_rl.width import (
    ParamCount,
    mlp_params,
    mlps_params,
    nature_cnn_params,
    scaled_hidden,
    solve_dense_width_for_mlp,
    solve_width,
    sparse_active_count,
    widen_for_active_count,
    widen_mlp_for_sparsity,
)

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
# (networks scaled together, the finest width grid on which every hidden size changes)
MLP_ARCHS = {
    "sac": ([(17, [256, 256], 12), (23, [256, 256], 1), (23, [256, 256], 1)], 256),  # actor + twin critics
    "ppo": ([(17, [64, 64], 6), (17, [64, 64], 1)], 64),  # actor + value
    "dqn_mlp": ([(6, [512, 512], 3)], 512),
}
CNN_GRID = 512  # conv channels 32/64 and hidden 512 all change on multiples of 1/512


def torch_mlp(n_in: int, hidden: list[int], n_out: int, bias: bool) -> nn.Module:
    sizes = [n_in, *hidden, n_out]
    return nn.Sequential(*(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:])))


def torch_nature_cnn(in_channels: int, n_actions: int, width: float) -> nn.Module:
    """SB3's NatureCNN (padding 0) plus the DQN Q head, channels and hidden units scaled with ceil."""
    c1, c2, c3, h = scaled_hidden([32, 64, 64, 512], width)
    convs = nn.Sequential(
        nn.Conv2d(in_channels, c1, 8, stride=4), nn.Conv2d(c1, c2, 4, stride=2), nn.Conv2d(c2, c3, 3, stride=1), nn.Flatten()
    )
    n_flat = convs(torch.zeros(1, in_channels, 84, 84)).shape[1]
    return nn.Sequential(convs, nn.Linear(n_flat, h), nn.Linear(h, n_actions))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def achievable_counts(count_fn: Callable[[float], int], grid: int) -> list[int]:
    """Every count the width-scaled network can have for widths in (0, 1]."""
    return sorted({count_fn(k / grid) for k in range(1, grid + 1)})


def assert_best_match(count: int, target: int, counts: list[int]) -> None:
    """Within 1%, or the neighbouring achievable counts bracket the target; and nothing achievable is closer."""
    best = min(abs(c - target) for c in counts)
    assert abs(count - target) == best
    if abs(count - target) > 0.01 * target:
        below = max(c for c in counts if c <= target)
        above = min(c for c in counts if c >= target)
        assert count in (below, above) and below <= target <= above


# --- counts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_count_matches_torch(bias: bool) -> None:
    for n_in, hidden, n_out in [(17, [256, 256], 12), (23, [256, 256], 1), (6, [512, 512], 3), (4, [7], 2), (3, [], 5)]:
        assert mlp_params(n_in, hidden, n_out).total(bias) == n_params(torch_mlp(n_in, hidden, n_out, bias))
    assert mlp_params(17, [256, 256], 12).total() == 17 * 256 + 256 * 256 + 256 * 12 + 256 + 256 + 12


@pytest.mark.parametrize("width", [1.0, 0.5, 0.313, 0.01])
def test_nature_cnn_count_matches_torch(width: float) -> None:
    assert nature_cnn_params(4, 6, width).total() == n_params(torch_nature_cnn(4, 6, width))
    no_bias = nature_cnn_params(4, 6, width).total(bias=False)
    assert no_bias == nature_cnn_params(4, 6, width).kernels < nature_cnn_params(4, 6, width).total()


def test_paper_standard_counts_kernels_only() -> None:
    # Graesser et al. 2022 figure x-axis scales (kernels): SAC Walker2d 216k, PPO Walker2d 10.8k, DQN Acrobot 267k,
    # Nature CNN ('same' padding, rigl/rl/dqn_agents.py) 4.05M
    assert mlps_params(MLP_ARCHS["sac"][0]).kernels == 216_320
    assert mlps_params(MLP_ARCHS["ppo"][0]).kernels == 10_816
    assert mlps_params(MLP_ARCHS["dqn_mlp"][0]).kernels == 266_752
    # 'same' padding (Dopamine): 84 → 21 → 11 → 11, flatten 11·11·64 = 7,744
    same_kernels = 8 * 8 * 4 * 32 + 4 * 4 * 32 * 64 + 3 * 3 * 64 * 64 + 7_744 * 512 + 512 * 6
    assert nature_cnn_params(4, 6, same_padding=True).kernels == same_kernels == pytest.approx(4.05e6, rel=0.01)
    assert nature_cnn_params(4, 6).total() == 1_687_206  # SB3's padding-0 NatureCNN + Q head


def test_scaled_hidden_uses_ceil_and_keeps_one_unit() -> None:
    assert scaled_hidden([256, 256], 0.5) == [128, 128]
    assert scaled_hidden([64], 0.3) == [20]  # ceil(19.2)
    assert scaled_hidden([512, 64], 1e-4) == [1, 1]
    assert scaled_hidden([256], 0.25) == [64]  # no round-off to 65


def test_sparse_active_count_masks_kernels_only() -> None:
    params = ParamCount(kernels=1000, biases=30)
    assert sparse_active_count(params, 0.9) == 130
    assert sparse_active_count(params, 0.9, bias=False) == 100
    with pytest.raises(ValueError):
        sparse_active_count(params, 1.0)


# --- dense width matched to the sparse active count ------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("arch", sorted(MLP_ARCHS))
def test_dense_width_matches_sparse_active_count_mlp(arch: str, sparsity: float, bias: bool) -> None:
    nets, grid = MLP_ARCHS[arch]
    target = sparse_active_count(mlps_params(nets), sparsity, bias)
    solution = solve_dense_width_for_mlp(nets, sparsity, bias)
    assert solution.count == mlps_params(nets, solution.width).total(bias)
    assert solution.hidden == [scaled_hidden(h, solution.width) for _, h, _ in nets]
    assert solution.mismatch == pytest.approx((solution.count - target) / target)
    assert_best_match(solution.count, target, achievable_counts(lambda w: mlps_params(nets, w).total(bias), grid))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_dense_width_matches_sparse_active_count_nature_cnn(sparsity: float, bias: bool) -> None:
    def count(w: float) -> int:
        return nature_cnn_params(4, 6, w).total(bias)

    target = sparse_active_count(nature_cnn_params(4, 6), sparsity, bias)
    width = solve_width(count, target)
    assert_best_match(count(width), target, achievable_counts(count, CNN_GRID))


def test_solved_width_sits_mid_step() -> None:
    # The returned width is the middle of its constant-count step: nudging it does not change the count.
    nets, grid = MLP_ARCHS["dqn_mlp"]
    width = solve_dense_width_for_mlp(nets, 0.9).width
    assert scaled_hidden([grid], width - 0.4 / grid) == scaled_hidden([grid], width + 0.4 / grid)


def test_solve_width_clamps_to_bounds() -> None:
    assert solve_width(lambda w: round(100 * w), 10_000) == pytest.approx(1.0, abs=0.01)
    assert solve_width(lambda w: 50 + round(100 * w), 10) == pytest.approx(1e-3, abs=0.01)


# reference widths for d = 1 − s (kernels only), solved independently by bisection on the paper's networks
PAPER_WIDTHS = {
    "sac": (0.695, 0.422, 0.289, 0.191, 0.066),
    "ppo": (0.672, 0.391, 0.25, 0.156, 0.047),
    "dqn_mlp": (0.705, 0.443, 0.311, 0.219, 0.094),
}
PAPER_DENSITIES = (0.5, 0.2, 0.1, 0.05, 0.01)
PAPER_CNN_WIDTHS = (0.703, 0.438, 0.313, 0.219, 0.094)


@pytest.mark.parametrize("arch", sorted(PAPER_WIDTHS))
def test_paper_example_widths(arch: str) -> None:
    nets, grid = MLP_ARCHS[arch]
    for density, paper_width in zip(PAPER_DENSITIES, PAPER_WIDTHS[arch]):
        solution = solve_dense_width_for_mlp(nets, 1 - density, bias=False)
        target = sparse_active_count(mlps_params(nets), 1 - density, bias=False)
        paper_count = mlps_params(nets, paper_width).kernels
        assert abs(solution.count - target) <= abs(paper_count - target)  # at least as close as the paper's width
        assert solution.width == pytest.approx(paper_width, abs=2.5 / grid)  # within ~2 hidden units
    assert solve_dense_width_for_mlp(MLP_ARCHS["dqn_mlp"][0], 0.9, bias=False).width == pytest.approx(0.311, abs=0.005)


def test_paper_example_widths_nature_cnn() -> None:
    def count(w: float) -> int:
        return nature_cnn_params(4, 6, w, same_padding=True).total(bias=False)

    for density, paper_width in zip(PAPER_DENSITIES, PAPER_CNN_WIDTHS):
        width = solve_width(count, sparse_active_count(nature_cnn_params(4, 6, same_padding=True), 1 - density, bias=False))
        assert width == pytest.approx(paper_width, abs=0.005)


# --- Sparse Wide ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("arch", sorted(MLP_ARCHS))
def test_sparse_wide_matches_dense_count_mlp(arch: str, sparsity: float, bias: bool) -> None:
    nets, _ = MLP_ARCHS[arch]
    dense = mlps_params(nets).total(bias)
    solution = widen_mlp_for_sparsity(nets, sparsity, bias)
    assert solution.width >= 1.0
    assert solution.count == sparse_active_count(mlps_params(nets, solution.width), sparsity, bias)
    assert solution.count == pytest.approx(dense, rel=0.01)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparse_wide_matches_dense_count_nature_cnn(sparsity: float) -> None:
    def params(w: float) -> ParamCount:
        return nature_cnn_params(4, 6, w)

    width = widen_for_active_count(params, sparsity)
    assert width >= 1.0
    assert sparse_active_count(params(width), sparsity) == pytest.approx(nature_cnn_params(4, 6).total(), rel=0.01)


def test_sparse_wide_grows_with_sparsity() -> None:
    nets, _ = MLP_ARCHS["sac"]
    widths = [widen_mlp_for_sparsity(nets, s).width for s in SPARSITIES]
    assert widths == sorted(widths) and widths[0] > 1.0
    assert widths[-1] == pytest.approx(10.0, rel=0.05)  # ≈ 1/sqrt(0.01) for the quadratic middle layers
