"""Batched envs (envs/batched.py) against the SB3 path's own envs: the same numbers step for step, and exact resume.

The reference is ``envs.make_vec_env(spec, 1, seed)`` per env: gymnasium's env with SB3's Monitor and DummyVecEnv,
exactly what the SB3 path trains on. Policies are chosen so that episodes end both ways (termination and time limit).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from envs import load_env_spec, make_vec_env
from envs.batched import ClassicEnvs, GymEnvs, copies_supported, make_batched_envs
from envs.spec import EnvSpec

needs_mujoco = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="mujoco is not installed")


def _random_policy(space, rng):
    if hasattr(space, "n"):
        return lambda obs: rng.integers(space.n, size=len(obs))
    return lambda obs: rng.uniform(space.low, space.high, size=(len(obs), *space.shape)).astype(np.float32)


def _pump_policy(velocity_column: int):
    """Push along the velocity in ``velocity_column`` (reaches MountainCar's goal, swings Acrobot up); later envs push
    at random more often (they run into the time limit)."""
    rng = np.random.default_rng(1)

    def act(obs):
        noise = np.linspace(0.0, 1.0, len(obs))
        push = np.where(obs[:, velocity_column] >= 0, 2, 0)
        return np.where(rng.random(len(obs)) < noise, rng.integers(3, size=len(obs)), push)

    return act


def _balance_policy():
    """CartPole: push towards the pole's fall (lasts to the time limit), with more random pushes for later envs (falls)."""
    rng = np.random.default_rng(2)

    def act(obs):
        noise = np.linspace(0.0, 0.6, len(obs))
        return np.where(rng.random(len(obs)) < noise, rng.integers(2, size=len(obs)), obs[:, 2] + obs[:, 3] > 0).astype(int)

    return act


CASES = [  # (env, seeds, steps, policy factory: space -> obs -> actions)
    ("CartPole", [0, 1, 2, 3, 11], 1200, lambda space: _balance_policy()),
    ("Acrobot", [0, 4, 9], 1200, lambda space: _pump_policy(5)),
    ("MountainCar", [0, 3, 8], 1200, lambda space: _pump_policy(1)),
    ("Pendulum", [0, 1, 5], 700, lambda space: _random_policy(space, np.random.default_rng(0))),
]
MUJOCO_CASES = [
    ("Hopper", [0, 1], 400, lambda space: _random_policy(space, np.random.default_rng(0))),  # terminations
    ("HalfCheetah", [2], 1050, lambda space: _random_policy(space, np.random.default_rng(0))),  # the time limit
]


def _assert_equal_to_sb3(name: str, seeds: list[int], steps: int, policy_for, **kwargs) -> dict[str, int]:
    """Step the batch and one SB3 VecEnv per seed with the same actions; every output must be identical."""
    spec = load_env_spec(name)
    batch = make_batched_envs(spec, seeds, **kwargs)
    references = [make_vec_env(spec, 1, seed) for seed in seeds]
    obs = batch.reset()
    np.testing.assert_array_equal(obs, np.concatenate([r.reset() for r in references]).astype(np.float32))
    policy = policy_for(references[0].action_space)
    ends = {"terminated": 0, "truncated": 0}
    for t in range(steps):
        actions = policy(obs)
        result = batch.step(actions)
        for k, reference in enumerate(references):
            ref_obs, ref_reward, ref_done, ref_infos = reference.step(actions[k : k + 1])
            where = f"{name} seed {seeds[k]} step {t}"
            np.testing.assert_array_equal(result.next_obs[k], ref_obs[0].astype(np.float32), err_msg=where)
            assert (result.rewards[k], result.dones[k]) == (ref_reward[0], ref_done[0]), where
            if ref_done[0]:
                info = ref_infos[0]
                terminal = np.asarray(info["terminal_observation"], dtype=np.float32)
                np.testing.assert_array_equal(result.real_next_obs[k], terminal, err_msg=where)
                assert result.terminated[k] == (not info["TimeLimit.truncated"]), where
                assert result.episodes[k]["r"] == info["episode"]["r"], where
                assert result.episodes[k]["l"] == info["episode"]["l"], where
                ends["terminated" if result.terminated[k] else "truncated"] += 1
            else:
                assert result.episodes[k] is None and not result.terminated[k], where
        obs = result.next_obs
    batch.close()
    return ends


@pytest.mark.parametrize("name, seeds, steps, policy_for", CASES, ids=[c[0] for c in CASES])
def test_classic_control_batch_equals_gymnasium_step_for_step(name, seeds, steps, policy_for):
    assert isinstance(make_batched_envs(load_env_spec(name), [0]), ClassicEnvs)
    ends = _assert_equal_to_sb3(name, seeds, steps, policy_for)
    assert ends["truncated"] > 0 and (ends["terminated"] > 0 or name == "Pendulum"), ends  # both ways, Pendulum has no end


@needs_mujoco
@pytest.mark.parametrize("name, seeds, steps, policy_for", MUJOCO_CASES, ids=[c[0] for c in MUJOCO_CASES])
def test_mujoco_batch_equals_gymnasium_step_for_step(name, seeds, steps, policy_for):
    ends = _assert_equal_to_sb3(name, seeds, steps, policy_for)
    assert sum(ends.values()) > 0


@needs_mujoco
def test_threads_step_the_same_numbers():
    _assert_equal_to_sb3("Hopper", [0, 1, 2], 150, MUJOCO_CASES[0][3], threads=2)


def test_classic_env_with_other_settings_is_stepped_by_gymnasium():
    spec = EnvSpec("CartPole", "gym", "CartPole-v1", "discrete", {"sutton_barto_reward": True})
    batch = make_batched_envs(spec, [0, 1])
    assert isinstance(batch, GymEnvs) and not copies_supported(spec)
    batch.reset()
    rewards = [batch.step(np.zeros(2, dtype=np.int64)).rewards for _ in range(30)]
    assert np.concatenate(rewards).min() == -1.0  # Sutton & Barto's reward: -1 when the pole falls


def test_frame_stacked_family_is_refused_in_one_line():
    spec = EnvSpec("atari/Pong", "atari", "Pong", "discrete", {})
    with pytest.raises(ValueError, match=r"stacks frames.*SB3 path"):
        make_batched_envs(spec, [0])


def _continue(batch, actions_seq):
    out = []
    for actions in actions_seq:
        result = batch.step(actions)
        returns = [e and e["r"] for e in result.episodes]
        out.append((result.next_obs, result.real_next_obs, result.rewards, result.dones, returns))
    return out


@pytest.mark.parametrize("name", ["CartPole", "Pendulum", pytest.param("Ant", marks=needs_mujoco)])
def test_restored_batch_continues_bit_for_bit(name):
    """states() through JSON, restored into a fresh batch, continues as the original (RNG, time limit, episode sums).

    Ant needs MuJoCo's whole integration state (the solver's warm start): qpos/qvel alone drift by ~1e-12 within 50 steps.
    """
    spec = load_env_spec(name)
    seeds = [3, 4, 5]
    rng = np.random.default_rng(0)
    space = make_vec_env(spec, 1, 0).action_space
    policy = _random_policy(space, rng)
    steps = [policy(np.zeros((3, 1))) for _ in range(260)]
    straight = make_batched_envs(spec, seeds)
    straight.reset()
    _continue(straight, steps[:60])
    saved = json.loads(json.dumps(straight.states()))
    expected = _continue(straight, steps[60:])
    restored = make_batched_envs(spec, seeds)
    restored.reset()
    restored.restore(saved)
    got = _continue(restored, steps[60:])
    if name != "Ant":  # episodes end (and reset from the restored stream) after the restore
        assert any(any(ends) for *_, ends in expected)
    for t, (a, b) in enumerate(zip(expected, got)):
        for x, y in zip(a[:4], b[:4]):
            np.testing.assert_array_equal(x, y, err_msg=f"step {60 + t}")
        assert a[4] == b[4]


def test_restore_refuses_states_it_did_not_write():
    batch = make_batched_envs(load_env_spec("CartPole"), [0])
    with pytest.raises(ValueError, match="older population engine"):
        batch.restore([[{"np_random": {}}]])


@pytest.mark.parametrize("name", ["Acrobot", pytest.param("HalfCheetah", marks=needs_mujoco)])
def test_copies_of_a_stream_start_where_one_env_would_start_its_episodes(name):
    """Copy j of a stream starts as episode j of one env run episode after episode (its j-th reset draw)."""
    spec = load_env_spec(name)
    copies = 4
    batch = make_batched_envs(spec, [7, 8], copies=copies)
    starts = batch.reset().reshape(2, copies, -1)
    for stream, seed in enumerate([7, 8]):
        reference = make_vec_env(spec, 1, seed)
        first = reference.reset()[0]
        env = reference.envs[0]
        expected = [first] + [env.reset()[0] for _ in range(copies - 1)]  # later episodes: unseeded resets
        np.testing.assert_array_equal(starts[stream], np.asarray(expected, dtype=np.float32))
        assert len({row.tobytes() for row in starts[stream]}) == copies
