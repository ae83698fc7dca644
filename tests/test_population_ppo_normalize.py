"""PPO members with ``agent.normalize=true``: each member's observation/reward normalisation is SB3's ``VecNormalize``
on its env (the SB3 path's wrapper): the normalised rollout, the statistics, the frozen evaluation normalisation, the
exported ``vecnormalize.npz``; a member alone equals the member in a population; exact resume; the default
``agent=ppo`` job runs on the population engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize, sync_envs_normalization

from tests.test_population_ppo import N_STEPS, TOTAL, _ppo_member_state, _progress_rows

GAMMA = 0.99  # configs/agent/ppo.yaml's agent.sb3.gamma (the rollout's timeout bootstrap)


def _normalized_run(root, members, env: str = "Pendulum", *extra: str):
    """As tests.test_population_ppo._ppo_run, with configs/agent/ppo.yaml's agent.normalize (true)."""
    from experiment.population import plan_member
    from experiment.population_records import PopulationRun
    from tests.agent_helpers import compose_run

    plans = []
    for seed, method in members:
        cfg = compose_run([
            "agent=ppo", f"env={env}", f"sparsity={method}", f"seed={seed}", f"agent.total_timesteps={TOTAL}",
            f"agent.sb3.n_steps={N_STEPS}", "agent.sb3.batch_size=32", "agent.sb3.n_epochs=2",
            "agent.eval_freq=128", "agent.eval_episodes=2", "agent.net_arch=[32,32]", "sparsity.update_interval=5",
            "progress_bar=false", "tensorboard=false", "diagnostics.freq=0", f"run_dir={root}/{method}_{seed}", *extra,
        ])  # fmt: skip
        assert cfg.agent.normalize
        plans.append(plan_member(cfg))
    return PopulationRun(plans, [32, 32], root / "population", "cpu", False)


class _Replay(VecEnv):
    """One member's recorded raw env stream (reset, then step results) as a VecEnv of one env, for SB3's VecNormalize."""

    def __init__(self, first_obs: np.ndarray, steps: list, member: int, space_env: VecEnv) -> None:
        super().__init__(1, space_env.observation_space, space_env.action_space)
        self.first_obs, self.steps, self.member, self.t = first_obs, steps, member, 0

    def reset(self):
        return self.first_obs[self.member : self.member + 1].copy()

    def step_async(self, actions) -> None:
        pass

    def step_wait(self):
        result, k = self.steps[self.t], self.member
        self.t += 1
        info = {}
        if result.dones[k]:  # DummyVecEnv: the terminal observation and Monitor's truncation flag
            info = {"terminal_observation": result.real_next_obs[k].copy(), "TimeLimit.truncated": not result.terminated[k]}
        obs = result.next_obs[k : k + 1].copy()
        return obs, np.asarray(result.rewards[k : k + 1], dtype=np.float32), np.asarray(result.dones[k : k + 1]), [info]

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [None]

    def set_attr(self, attr_name, value, indices=None) -> None:
        pass

    def env_method(self, method_name, *args, indices=None, **kwargs):
        return [None]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False]


def test_a_members_normalized_rollout_is_sb3_vecnormalize_of_its_env(tmp_path):
    """Each member's stored observations and rewards (the time-limit bootstrap with V of the normalised terminal
    observation included), its statistics after the rollout, the frozen evaluation normalisation and the exported
    ``vecnormalize.npz`` equal SB3's ``VecNormalize`` (default arguments, as ``experiment/sb3.py`` wraps) fed the
    member's raw env stream."""
    from agents.population.member_envs import MemberEnvs
    from envs import load_env_spec, make_vec_env
    from experiment.sb3_state import VEC_NORMALIZE_FILE, load_vec_normalize, vec_normalize_file

    run = _normalized_run(
        tmp_path, [(0, "dense"), (1, "rigl")], "Pendulum", "agent.sb3.n_steps=256", "agent.total_timesteps=256"
    )
    loop = run.loop
    # the loop reset its envs when built: the raw first observations from a fresh copy of the same envs
    first_obs = MemberEnvs(load_env_spec("Pendulum"), [0, 1]).reset()
    seen, step = [], loop.envs.step

    def recording_step(actions, active=None):
        result = step(actions, active)
        seen.append(result)
        return result

    loop.envs.step = recording_step
    captured = {}
    train = loop._train

    def capture_then_train():  # the rollout and the values it was collected with, before training changes them
        captured["buffer"] = {k: v.clone() for k, v in loop.buffer.items()}
        captured["agent"] = {k: v.clone() for k, v in run.agent.state_dict().items()}
        train()

    loop._train = capture_then_train
    evaluate, at_evaluation = run.evaluate, []

    def recording_evaluate():  # the statistics the evaluation at env step 128 (agent.eval_freq) normalises with
        at_evaluation.append((loop.num_timesteps, loop.normalizer.obs_mean.copy(), loop.normalizer.obs_var.copy()))
        evaluate()

    run.evaluate = recording_evaluate
    for member in run.members:
        run._open_run_dir(member)
    loop.learn(run)
    buffer = captured["buffer"]
    trained = {k: v.clone() for k, v in run.agent.state_dict().items()}
    run.agent.load_state_dict(captured["agent"])
    truncated_at = [i for i, r in enumerate(seen) if r.dones.any()]
    assert truncated_at == [199]  # Pendulum's time limit: the bootstrap uses the normalised terminal observation
    assert [t for t, _, _ in at_evaluation] == [128, 256]
    for k in range(2):
        space = make_vec_env(load_env_spec("Pendulum"), 1, k)
        venv = VecNormalize(_Replay(first_obs, seen, k, space))
        obs = venv.reset()
        for t in range(256):
            assert np.array_equal(buffer["obs"][t, k].numpy(), obs[0]), t
            obs, rewards, dones, infos = venv.step(np.zeros((1, 1)))
            if t + 1 == at_evaluation[0][0]:  # SB3's EvalCallback runs after this step's VecNormalize update
                assert np.array_equal(at_evaluation[0][1][k], venv.obs_rms.mean)
                assert np.array_equal(at_evaluation[0][2][k], venv.obs_rms.var)
            if dones[0] and infos[0]["TimeLimit.truncated"]:  # SB3's collect_rollouts, with member k's critic
                terminal = np.zeros((2, 3), dtype=np.float32)
                terminal[k] = infos[0]["terminal_observation"]
                with torch.no_grad():
                    value = run.agent.values(run.agent._obs_tensor(terminal))[k, :1]  # [1]: SB3 adds predict_values(obs)[0]
                rewards[0] += GAMMA * value
            assert buffer["rewards"][t, k].item() == np.float32(rewards[0]), t
        stats = loop.normalizer.member(k)
        for name, rms in (("obs_rms", venv.obs_rms), ("ret_rms", venv.ret_rms)):
            for field in ("mean", "var", "count"):
                assert np.array_equal(np.asarray(stats[f"{name}/{field}"]), np.asarray(getattr(rms, field))), (name, field)
        assert np.array_equal(stats["returns"], venv.returns)
        # evaluation: SB3's EvalCallback syncs the statistics into a VecNormalize(training=False, norm_reward=False)
        eval_venv = VecNormalize(DummyVecEnv([lambda env=space.envs[0]: env]), training=False, norm_reward=False)
        sync_envs_normalization(venv, eval_venv)
        eval_obs = np.random.default_rng(k).normal(size=(2, 3, 3)).astype(np.float32) * 5
        expected = eval_venv.normalize_obs(eval_obs[k])
        assert np.array_equal(loop.normalizer.normalize_obs(eval_obs)[k], expected)
        space.close()
    run.agent.load_state_dict(trained)
    calls = []
    run.agent.eval_actions = lambda obs: calls.append(obs) or np.zeros((2, obs.shape[1], 1), dtype=np.float32)
    raw = np.random.default_rng(9).normal(size=(2, 3, 3)).astype(np.float32)
    loop.eval_actions(raw)
    assert np.array_equal(calls[0], loop.normalizer.normalize_obs(raw))  # evaluation acts on normalised observations
    del run.agent.eval_actions
    run.finish()
    for k, (seed, method) in enumerate([(0, "dense"), (1, "rigl")]):
        exported = VecNormalize(make_vec_env(load_env_spec("Pendulum"), 1, seed))
        run_dir = tmp_path / f"{method}_{seed}"
        assert vec_normalize_file(run_dir) == run_dir / VEC_NORMALIZE_FILE  # where noise_robustness finds it
        load_vec_normalize(run_dir / VEC_NORMALIZE_FILE, exported)  # the SB3 path's reader
        assert np.array_equal(exported.obs_rms.mean, loop.normalizer.obs_mean[k])
        assert np.array_equal(exported.obs_rms.var, loop.normalizer.obs_var[k])
        assert exported.obs_rms.count == loop.normalizer.obs_count[k, 0] == pytest.approx(257, abs=1e-3)  # reset + 256 steps
        assert exported.ret_rms.var == loop.normalizer.ret_var[k]
        exported.close()


def test_a_normalizing_ppo_member_trains_bit_identically_alone_and_in_a_population(tmp_path):
    """Decision 41: a member's statistics, rollouts, updates and evaluations are its own."""
    alone = _normalized_run(tmp_path / "alone", [(3, "rigl")], "Pendulum")
    alone.learn()
    trio = _normalized_run(tmp_path / "trio", [(5, "set"), (3, "rigl"), (0, "dense")], "Pendulum")
    trio.learn()
    reference, state = _ppo_member_state(alone, 3), _ppo_member_state(trio, 3)
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key
    for field, value in alone.loop.normalizer.member(0).items():
        assert np.array_equal(np.asarray(trio.loop.normalizer.member(1)[field]), np.asarray(value)), field
    assert not np.array_equal(trio.loop.normalizer.obs_mean[0], trio.loop.normalizer.obs_mean[1])  # own statistics
    assert alone.members[0].eval_results == trio.members[1].eval_results
    assert _progress_rows(tmp_path / "alone" / "rigl_3") == _progress_rows(tmp_path / "trio" / "rigl_3")


def test_a_normalizing_ppo_population_resumes_exactly(tmp_path):
    """The statistics and discounted returns are in the population checkpoint: stopped inside a rollout and resumed,
    every member ends as the uninterrupted run (weights, statistics, evaluations)."""
    from agents.callbacks import TrainingStopped

    members = [(0, "rigl"), (1, "dense")]
    straight = _normalized_run(tmp_path / "straight", members)
    straight.learn()
    first = _normalized_run(tmp_path / "resumed", members)
    with pytest.raises(TrainingStopped):
        first.learn(stop=lambda: first.num_timesteps >= 100)
    first.close()
    resumed = _normalized_run(tmp_path / "resumed", members, "Pendulum", "resume=true")
    resumed.load_checkpoint()
    assert resumed.num_timesteps == 100
    resumed.learn()
    for name, tensor in straight.agent.state_dict().items():
        assert torch.equal(tensor, resumed.agent.state_dict()[name]), name
    for name, tensor in straight.loop.normalizer.state().items():
        assert torch.equal(tensor, resumed.loop.normalizer.state()[name]), name
    for a, b in zip(straight.members, resumed.members):
        assert a.eval_results == b.eval_results


def test_the_default_ppo_job_trains_on_the_population_engine(tmp_path):
    """configs/agent/ppo.yaml normalises (agent.normalize=true): a default ``agent=ppo`` sweep is a population now,
    and each member's run directory holds the SB3 path's ``vecnormalize.npz``."""
    command = [sys.executable, "-m", "sparse_rl.run", "-m", "hydra/launcher=population", f"run_root={tmp_path}",
               "progress_bar=false", "tensorboard=false", "agent=ppo", "env=CartPole", "seed=0,1",
               "agent.total_timesteps=300", "agent.eval_episodes=2"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 runs in 1 population(s)" in result.stdout
    summaries = list(tmp_path.glob("ppo/*/*/seed_*/summary.json"))
    assert len(summaries) == 2
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "completed" and summary["engine"] == "population"
        assert summary["num_timesteps"] == 2048  # one whole rollout of configs/agent/ppo.yaml's n_steps
        assert (path.parent / "vecnormalize.npz").is_file()


@pytest.mark.parametrize("agent", ["sac", "dqn", "td3"])
def test_off_policy_members_still_refuse_normalize_in_one_line(agent):
    """The normalisation is the on-policy loop's; the off-policy loop would train on raw observations."""
    from agents.population.compose import PopulationConfigError, check_supported
    from tests.agent_helpers import compose_run

    env = "CartPole" if agent == "dqn" else "Pendulum"
    cfg = compose_run([f"agent={agent}", f"env={env}", "agent.normalize=true"])
    with pytest.raises(PopulationConfigError, match=r"^the population engine needs agent.n_envs=1, agent.normalize=false, "):
        check_supported(cfg)
