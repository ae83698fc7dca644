"""Batched evaluation (MemberEnvs.evaluate) against the sequential evaluation the population engine ran before.

The reference is that implementation, kept here: one SB3 ``make_vec_env(spec, 1, seed + 10000)`` per member, every
member stepped episode after episode, all members acting through one ``eval_actions`` call on ``[K, obs]`` per step,
returns read from SB3's Monitor. Evaluations follow each other (the streams continue between them), as in a run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from agents.population.member_envs import MemberEnvs
from envs import EVAL_SEED_OFFSET, EnvSpec, make_vec_env
from experiment.population import plan_member
from experiment.population_records import PopulationRun
from tests.agent_helpers import compose_run

CASES = [  # (agent, env, members (seed, method), evaluation episodes, one forward on [K, E, obs] gives [K, 1, obs]'s bits)
    # HalfCheetah with 150-step episodes (gymnasium's max_episode_steps through env.kwargs) to stay fast
    ("dqn", "CartPole", [(0, "dense"), (1, "rigl"), (2, "set")], 5, True),
    ("sac", "Pendulum", [(0, "dense"), (3, "rigl")], 3, True),
    pytest.param(
        "sac", "HalfCheetah+", [(1, "dense"), (2, "static")], 2, False,
        marks=pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco is not installed"),
    ),
]  # fmt: skip


def _row_by_row(policy):
    """``policy`` on ``[K, obs]`` once per episode slot: the sequential evaluation's matmul shapes."""
    return lambda obs: np.stack([policy(obs[:, j]) for j in range(obs.shape[1])], axis=1)


def _population(agent: str, env: str, members, episodes: int, root: Path) -> PopulationRun:
    plans = []
    short = ["+env.kwargs.max_episode_steps=150"] if env.endswith("+") else []
    for seed, method in members:
        cfg = compose_run([
            f"agent={agent}", f"env={env.rstrip('+')}", *short, f"sparsity={method}", f"seed={seed}",
            "agent.total_timesteps=300", "agent.sb3.learning_starts=100", "agent.eval_freq=100000",
            f"agent.eval_episodes={episodes}", "agent.net_arch=[32,32]", "sparsity.update_interval=20",
            "progress_bar=false", "tensorboard=false", f"run_dir={root}/{method}_{seed}",
        ])  # fmt: skip
        plans.append(plan_member(cfg))
    return PopulationRun(plans, [32, 32], root / "population", "cpu", False)


def _sequential_evaluation(envs, policy, members: np.ndarray, episodes: int) -> list[list[float]]:
    """The population engine's evaluation before batching: SB3 VecEnvs, episode after episode."""
    obs = np.concatenate([env.reset() for env in envs]).astype(np.float32)
    remaining = np.where(members, episodes, 0)
    returns: list[list[float]] = [[] for _ in envs]
    while remaining.any():
        actions = policy(obs)
        for k, env in enumerate(envs):
            if remaining[k] == 0:
                continue
            step_obs, _, done, infos = env.step(actions[k : k + 1])
            obs[k] = step_obs[0]
            if done[0]:
                returns[k].append(float(infos[0]["episode"]["r"]))
                remaining[k] -= 1
    return returns


@pytest.mark.parametrize("agent, env, members, episodes, one_forward_exact", CASES)
def test_batched_evaluation_returns_equal_the_sequential_ones(agent, env, members, episodes, one_forward_exact, tmp_path):
    """Equal returns, evaluation after evaluation (the streams continue), with and without a failed member.

    The one forward per step on ``[K, E, obs]`` may round differently from ``[K, 1, obs]`` (CPU batched matmul bits
    depend on the batch for some shapes: here the 32 → 12 SAC head of HalfCheetah, ~1e-7 in an action, 1e-6 in a
    return). There the episodes are checked with the policy applied row by row (same seeding, same episodes, same
    numbers), and the one-forward returns to a relative 1e-4.
    """
    run = _population(agent, env, members, episodes, tmp_path)
    run.learn()  # trained weights: the members act differently
    assert run.eval_envs.batched_episodes  # classic control and MuJoCo run every episode side by side
    references = [make_vec_env(run.eval_envs.spec, 1, seed + EVAL_SEED_OFFSET) for seed, _ in members]
    policy = run.agent.eval_actions
    everyone = np.ones(len(members), dtype=bool)
    last_off = everyone.copy()
    last_off[-1] = False  # a member that failed is not evaluated
    for round_members in (everyone, everyone, last_off):  # the streams continue from one evaluation to the next
        expected = _sequential_evaluation(references, policy, round_members, episodes)
        if one_forward_exact:
            batched, lengths = run.eval_envs.evaluate(policy, round_members)
        else:
            state = run.eval_envs.states()
            one_forward, _ = run.eval_envs.evaluate(policy, round_members)
            np.testing.assert_allclose(np.concatenate(one_forward), np.concatenate(expected), rtol=1e-4)
            run.eval_envs.restore(state)
            batched, lengths = run.eval_envs.evaluate(_row_by_row(policy), round_members)
        assert batched == expected
        assert [len(x) for x in lengths] == [episodes if m else 0 for m in round_members]
        assert len({r for rs in batched for r in rs}) > 1  # episodes differ: the comparison can fail
    run.close()


def _heuristic(column: int, actions: int):
    """A deterministic policy on ``[K, obs]`` or ``[K, B, obs]``: push along ``obs[..., column]`` (no network)."""
    return lambda obs: np.where(obs[..., column] >= 0, actions - 1, 0)


SPECS = [  # (env spec, policy, batched side by side)
    (EnvSpec("Acrobot", "gym", "Acrobot-v1", "discrete", {}), _heuristic(5, 3), True),
    (EnvSpec("MountainCar", "gym", "MountainCar-v0", "discrete", {}), _heuristic(1, 3), True),
    (  # other physics: stepped by gymnasium itself, episodes one after another
        EnvSpec("Pendulum", "gym", "Pendulum-v1", "continuous", {"g": 9.81}),
        lambda obs: np.clip(-obs[..., 2:3], -2.0, 2.0).astype(np.float32),
        False,
    ),
]


@pytest.mark.parametrize("spec, policy, side_by_side", SPECS, ids=["Acrobot", "MountainCar", "Pendulum-other-g"])
def test_member_envs_evaluate_as_sb3s_episodes_one_after_another(spec, policy, side_by_side):
    """Without a population: batched where the env allows it, else one episode after another (stepped by gymnasium)."""
    seeds = [10_003, 10_007, 10_011]
    envs = MemberEnvs(spec, seeds, episodes=4)
    assert envs.batched_episodes == side_by_side
    references = [make_vec_env(spec, 1, seed) for seed in seeds]
    members = np.ones(len(seeds), dtype=bool)
    for _ in range(2):
        returns, _ = envs.evaluate(policy, members)
        assert returns == _sequential_evaluation(references, policy, members, 4)
    assert len({r for rs in returns for r in rs}) > 1
