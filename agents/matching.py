"""Equal-parameter variants of an agent's networks (the width-scaled "Dense" baselines of Graesser et al. 2022's
figures, ``train_eval.width`` in google-research/rigl ``rigl/rl/tfagents/*_train_eval.py``; Sparse-IFT's Sparse Wide).

``dense_matched``: a dense network per group whose parameter count (kernels + biases, the paper's logging)
matches the sparse group's active count. ``wide``: a sparse network widened so its active count matches the
default dense network's count. Hidden widths are scaled per group (actor and critic each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim

from agents.spec import AgentSpec, Net, agent_spec
from sparse_rl.width import solve_dense_width_for_mlp, widen_mlp_for_sparsity


def _hidden(net_arch: Any, key: str | None) -> list[int]:
    """Hidden sizes of one network from SB3's net_arch (a list shared by all networks, or a dict)."""
    if isinstance(net_arch, Mapping):
        return list(net_arch[key])
    return list(net_arch)


def group_networks(
    agent: str | AgentSpec, observation_space: spaces.Space, action_space: spaces.Space, net_arch: Any
) -> dict[str, list[Net]]:
    """Each group's MLPs as (n_in, hidden, n_out), in SB3's layout for ``agent`` (its spec's ``networks``)."""
    spec = agent_spec(agent)
    obs = get_flattened_obs_dim(observation_space)
    if isinstance(action_space, spaces.Discrete):
        act = int(action_space.n)
    else:
        act = int(action_space.shape[0])
    return spec.networks(obs, act, {group: _hidden(net_arch, key) for group, key in spec.hidden_keys.items()})


def equal_parameter_net_arch(
    agent: str | AgentSpec,
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
    keys = agent_spec(agent).hidden_keys
    if set(keys.values()) == {None}:  # net_arch is one list of hidden sizes, the only group's
        (sizes,) = hidden.values()
        return sizes, report
    return {keys[group]: sizes for group, sizes in hidden.items()}, report
