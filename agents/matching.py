"""Equal-parameter variants of an agent's networks (paper §4; Sparse-IFT's Sparse Wide).

``dense_matched``: a dense network per group whose parameter count (kernels + biases, the paper's logging)
matches the sparse group's active count. ``wide``: a sparse network widened so its active count matches the
default dense network's count. Hidden widths are scaled per group (actor and critic each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim

from sparse_rl.width import solve_dense_width_for_mlp, widen_mlp_for_sparsity

Net = tuple[int, list[int], int]
N_CRITICS = 2  # SB3 SAC and TD3 default twin critics (n_critics)
HIDDEN_KEYS = {
    "sac": {"actor": "pi", "critic": "qf"},
    "td3": {"actor": "pi", "critic": "qf"},
    "ppo": {"actor": "pi", "critic": "vf"},
    "dqn": {"q": None},
}


def _hidden(net_arch: Any, key: str | None) -> list[int]:
    """Hidden sizes of one network from SB3's net_arch (a list shared by all networks, or a dict)."""
    if isinstance(net_arch, Mapping):
        return list(net_arch[key])
    return list(net_arch)


def group_networks(
    agent: str, observation_space: spaces.Space, action_space: spaces.Space, net_arch: Any
) -> dict[str, list[Net]]:
    """Each group's MLPs as (n_in, hidden, n_out), in SB3's layout for ``agent``."""
    obs = get_flattened_obs_dim(observation_space)
    if isinstance(action_space, spaces.Discrete):
        act = int(action_space.n)
    else:
        act = int(action_space.shape[0])
    keys = HIDDEN_KEYS[agent]
    if agent == "sac":  # actor: mean and log-std heads; critics see (obs, action)
        return {
            "actor": [(obs, _hidden(net_arch, keys["actor"]), 2 * act)],
            "critic": [(obs + act, _hidden(net_arch, keys["critic"]), 1)] * N_CRITICS,
        }
    if agent == "td3":  # a deterministic actor (one head of A outputs); twin critics as SAC's
        return {
            "actor": [(obs, _hidden(net_arch, keys["actor"]), act)],
            "critic": [(obs + act, _hidden(net_arch, keys["critic"]), 1)] * N_CRITICS,
        }
    if agent == "ppo":
        return {
            "actor": [(obs, _hidden(net_arch, keys["actor"]), act)],
            "critic": [(obs, _hidden(net_arch, keys["critic"]), 1)],
        }
    return {"q": [(obs, _hidden(net_arch, None), act)]}


def equal_parameter_net_arch(
    agent: str,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    net_arch: Any,
    group_sparsity: Mapping[str, float],
    variant: str,
) -> tuple[Any, dict[str, Any]]:
    """SB3 net_arch for ``variant`` (``dense_matched`` or ``wide``) and a per-group report of the solve."""
    solve = {"dense_matched": solve_dense_width_for_mlp, "wide": widen_mlp_for_sparsity}[variant]
    report: dict[str, Any] = {}
    hidden: dict[str, list[int]] = {}
    for group, nets in group_networks(agent, observation_space, action_space, net_arch).items():
        solution = solve(nets, group_sparsity[group])
        hidden[group] = solution.hidden[0]
        report[group] = {
            "width": solution.width,
            "hidden": solution.hidden[0],
            "params": solution.count,
            "target": round(solution.count / (1 + solution.mismatch)),
            "relative_mismatch": solution.mismatch,
        }
    keys = HIDDEN_KEYS[agent]
    if agent == "dqn":
        return hidden["q"], report
    return {keys[group]: sizes for group, sizes in hidden.items()}, report
