"""The population engine: sparse invariants per member, member independence, exact resume, failures, grouping, outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, SAC

from experiment.layout import last_fraction_mean
from experiment.population import plan_member
from experiment.population_records import PopulationRun
from tests.agent_helpers import compose_run

ENVS = {"sac": "Pendulum", "dqn": "CartPole", "td3": "Pendulum"}
MEMBERS = [(0, "dense"), (1, "rigl"), (2, "set"), (3, "prune"), (4, "static")]


def _plans(agent: str, root: Path, members=MEMBERS, *extra: str, total: int = 400):
    plans = []
    for seed, method in members:
        cfg = compose_run([
            f"agent={agent}", f"env={ENVS[agent]}", f"sparsity={method}", f"seed={seed}", f"agent.total_timesteps={total}",
            "agent.sb3.learning_starts=100", "agent.eval_freq=200", "agent.eval_episodes=2", "agent.net_arch=[32,32]",
            "sparsity.update_interval=20", "progress_bar=false", "tensorboard=false", f"run_dir={root}/{method}_{seed}",
            *extra,
        ])  # fmt: skip
        plans.append(plan_member(cfg))
    return plans


def _trainer(agent: str, root: Path, members=MEMBERS, *extra: str, total: int = 400) -> PopulationRun:
    return PopulationRun(_plans(agent, root, members, *extra, total=total), [32, 32], root / "population", "cpu", False)


def _assert_member_invariants(trainer: PopulationRun) -> None:
    """Exact counts, zero masked weights (online and target), zero Adam state outside the mask, target masks = online."""
    for member in trainer.members:
        controller = member.controller
        controller.check_invariants()
        for group in controller.groups:
            for layer in group.layers:
                if (controller.sparse and controller.updater.updates is False) or member.plan.sparsity.method in (
                    "set",
                    "rigl",
                ):
                    assert layer.active == layer.allocated, (member.plan.sparsity.method, layer.name)
                assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
                for state in layer.optimizer_state(None):
                    assert torch.count_nonzero(state[~layer.mask]) == 0
            for layer, target in zip(group.layers, group.target_layers):
                assert torch.equal(target.weight_mask, layer.mask)
                assert torch.count_nonzero(target.weight[~layer.mask]) == 0


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_population_keeps_every_members_sparse_invariants(agent, tmp_path):
    trainer = _trainer(agent, tmp_path)
    before = {
        m.plan.sparsity.method: [layer.mask.clone() for g in m.controller.groups for layer in g.layers]
        for m in trainer.members
    }
    trainer.learn()
    _assert_member_invariants(trainer)
    for member in trainer.members:
        method = member.plan.sparsity.method
        after = [layer.mask for g in member.controller.groups for layer in g.layers]
        changed = any(not torch.equal(a, b) for a, b in zip(before[method], after))
        assert changed == (method in ("set", "rigl", "prune")), method
        if method == "prune":  # pruning reached its final allocation at the end of its window
            for group in member.controller.groups:
                assert all(layer.active == layer.allocated for layer in group.layers)
    summaries = trainer.finish()
    assert [s["status"] for s in summaries] == ["completed"] * len(MEMBERS)
    sparse = [s for s in summaries if s["method"] != "dense"]
    assert all(s["params"]["active"] == pytest.approx(0.1 * s["params"]["total"], abs=2) for s in sparse)


def test_topology_update_touches_only_its_own_members_optimizer_state(tmp_path):
    trainer = _trainer("sac", tmp_path, [(0, "rigl"), (1, "rigl")])
    trainer.learn()  # creates Adam state
    critic = trainer.agent.critic_optimizer.state[trainer.agent.critic.layers[1].weight]
    for value in (critic["exp_avg"], critic["exp_avg_sq"]):
        value.fill_(1.0)
    member = trainer.members[0].controller
    for layer in member.groups[1].layers:
        layer.dense_grad.copy_(torch.rand_like(layer.dense_grad))
    old = [layer.mask.clone() for layer in member.groups[1].layers]
    member._update(member.updater.window.start + member.updater.window.interval)
    changed = old[1] ^ member.groups[1].layers[1].mask
    assert changed.any()
    rows = critic["exp_avg"]  # rows 0, 1: member 0's twin critics; rows 2, 3: member 1's
    assert torch.all(rows[2:] == 1.0), "member 1's optimizer state was touched by member 0's update"
    assert torch.all(rows[0][changed] == 0.0) and torch.all(rows[0][~changed] == 1.0)


def _member_state(trainer: PopulationRun, seed: int) -> dict[str, torch.Tensor]:
    """Everything a member owns, by name: weights, biases, masks, targets, Adam moments (and SAC's entropy coef)."""
    member = next(m for m in trainer.members if m.seed == seed)
    state = {}
    for group in member.controller.groups:
        for i, layer in enumerate(group.layers):
            name = f"{group.name}/{layer.name}"
            state[f"{name}/weight"], state[f"{name}/bias"] = layer.weight.detach(), layer.module.bias.detach()
            state[f"{name}/mask"] = layer.mask
            for j, moment in enumerate(layer.optimizer_state(None)):
                state[f"{name}/adam{j}"] = moment
            if group.target_layers:
                state[f"{name}/target"] = group.target_layers[i].weight.detach()
    if hasattr(trainer.agent, "log_ent_coef"):
        state["log_ent_coef"] = trainer.agent.log_ent_coef[member.index].detach()
    return state


def _progress_rows(run_dir: Path) -> list[dict[str, str]]:
    """``progress.csv`` without its wall-clock columns."""
    import csv

    with open(run_dir / "progress.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("time/fps", "time/time_elapsed")} for row in csv.DictReader(f)]


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_a_member_trains_bit_identically_alone_and_in_any_population(agent, tmp_path):
    """Issue 20: every draw of a member comes from its own streams, so its run does not depend on its population.

    Weights, masks, Adam moments, evaluations and logs (but the wall-clock columns) bit for bit.
    """
    populations = {
        "alone": [(3, "rigl")],
        "dense_alone": [(0, "dense")],
        "pair": [(0, "dense"), (3, "rigl")],
        "larger_reordered": [(3, "rigl"), (5, "set"), (0, "dense"), (1, "static")],
    }
    runs = {}
    for name, members in populations.items():
        trainer = _trainer(agent, tmp_path / name, members)
        trainer.learn()
        runs[name] = trainer
    assert runs["alone"].members[0].controller.num_updates > 0  # RigL changed its topology along the way
    for seed, method, alone in ((3, "rigl", "alone"), (0, "dense", "dense_alone")):
        reference = _member_state(runs[alone], seed)
        evaluations = np.array(next(m for m in runs[alone].members if m.seed == seed).eval_results)
        logs = _progress_rows(tmp_path / alone / f"{method}_{seed}")
        for name in ("pair", "larger_reordered"):
            state = _member_state(runs[name], seed)
            assert state.keys() == reference.keys()
            for key, tensor in reference.items():
                assert torch.equal(state[key], tensor), (seed, name, key)
            found = np.array(next(m for m in runs[name].members if m.seed == seed).eval_results)
            assert np.array_equal(found, evaluations)
            assert _progress_rows(tmp_path / name / f"{method}_{seed}") == logs, (seed, name)


def test_member_streams_do_not_depend_on_the_population():
    """The draws themselves are bit-identical at any population size and order (replay indices, noise, coins)."""
    from agents.population.streams import Draw, MemberStreams

    alone, population = MemberStreams([3], torch.device("cpu")), MemberStreams([0, 5, 3, 1], torch.device("cpu"))
    for draw in Draw:
        assert torch.equal(alone.bits(draw, 17, 64), population.bits(draw, 17, 64)[2:3])
        assert not torch.equal(population.bits(draw, 17, 64)[0], population.bits(draw, 17, 64)[2])
    assert not torch.equal(alone.bits(Draw.REPLAY_INDEX, 17, 64), alone.bits(Draw.REPLAY_INDEX, 18, 64))


def test_replay_indices_are_uniform_at_a_million_transitions():
    """Issue 20: ``(rand_float32 · size).long()`` favours some indices by ~6% at 1M (24 random bits); the members'
    63-bit draws modulo the size do not. A chi-square over 1M bins (20 draws each) tells the two apart."""
    from agents.population.streams import Draw, MemberStreams

    size, draws = 1_000_000, 20_000_000
    streams = MemberStreams([7], torch.device("cpu"))
    ours = torch.cat([streams.below(Draw.REPLAY_INDEX, step, 1_000_000, size)[0] for step in range(draws // 1_000_000)])
    generator = torch.Generator().manual_seed(7)
    old = (torch.rand(draws, generator=generator) * size).long()

    def chi_square_z(index: torch.Tensor) -> float:
        counts = torch.bincount(index, minlength=size).double()
        expected = draws / size
        return float((((counts - expected) ** 2 / expected).sum() - (size - 1)) / (2 * (size - 1)) ** 0.5)

    assert int(ours.max()) < size and int(ours.min()) >= 0
    z_ours, z_old = chi_square_z(ours), chi_square_z(old)
    assert abs(z_ours) < 3, z_ours  # a chi-square within 3 standard deviations of its mean: uniform
    assert z_old > 5, z_old  # the old draw fails the same test (its bias is systematic: z ≈ 7.6)


@pytest.mark.parametrize("agent", ["sac", "dqn"])
@pytest.mark.parametrize("stop", [300, 60])  # 60: inside the warm-up (the members' warm-up action spaces resume)
def test_population_resumes_exactly_from_its_checkpoint(agent, stop, tmp_path):
    members = [(0, "rigl"), (1, "dense")]
    straight = _trainer(agent, tmp_path / "straight", members)
    straight.learn()
    first = _trainer(agent, tmp_path / "resumed", members)
    first.total = stop  # stop at a checkpoint, as a killed run would after writing it
    first.learn(checkpoint_freq=stop if agent == "dqn" else stop // 2)
    first.save_checkpoint()
    first.close()
    resumed = _trainer(agent, tmp_path / "resumed", members, "resume=true")
    resumed.load_checkpoint()
    assert resumed.num_timesteps == stop
    resumed.learn()
    for name, stored in straight.loop.replay.storage.items():
        assert torch.equal(stored, resumed.loop.replay.storage[name]), name
    for name, tensor in straight.agent.state_dict().items():
        assert torch.equal(tensor, resumed.agent.state_dict()[name]), name
    for a, b in zip(straight.members, resumed.members):
        assert a.eval_results == b.eval_results
        assert a.controller.num_updates == b.controller.num_updates


def test_a_diverging_member_fails_alone(tmp_path):
    trainer = _trainer("sac", tmp_path, [(0, "dense"), (1, "rigl"), (2, "set")], "nan_check_freq=50")
    with torch.no_grad():
        trainer.agent.actor.layers[0].weight[1].fill_(float("nan"))
    trainer.learn(nan_check_freq=50)
    summaries = trainer.finish()
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert "non-finite" in summaries[1]["error"] and "actor" in summaries[1]["error"]
    assert all(np.isfinite(s["score"]) for s in (summaries[0], summaries[2]))


@pytest.mark.parametrize(("agent", "algo"), [("sac", SAC), ("dqn", DQN)])
def test_population_writes_the_sb3_paths_run_directory(agent, algo, tmp_path):
    trainer = _trainer(agent, tmp_path, [(0, "rigl")])
    trainer.learn()
    summary = trainer.finish()[0]
    run_dir = tmp_path / "rigl_0"
    for name in ("summary.json", "evaluations.npz", "progress.csv", "model.zip", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    with np.load(run_dir / "evaluations.npz") as data:
        assert list(data["timesteps"]) == [200, 400]
        assert data["results"].shape == (2, 2)
        assert summary["score"] == pytest.approx(last_fraction_mean(data["results"].mean(axis=1)))
    model = algo.load(run_dir / "model.zip", device="cpu")
    member = trainer.members[0].controller
    sb3_layers = dict(model.policy.named_modules())
    for group in member.groups:
        for layer in group.layers:
            if layer.name == "head":  # the paper's one actor output layer = SB3's mu and log_std
                mask = torch.cat([sb3_layers["actor.mu"].weight_mask, sb3_layers["actor.log_std"].weight_mask])
            else:
                prefix = {"actor": "actor.", "critic": "critic.", "q": "q_net."}[group.name]
                mask = sb3_layers[prefix + layer.name].weight_mask
            assert torch.equal(mask, layer.mask)


def _sweep(root: Path, *overrides: str, tiny: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sparse_rl.run", "-m", "hydra/launcher=population", f"run_root={root}",
               "progress_bar=false",
               "tensorboard=false", "agent.total_timesteps=300", *overrides]  # fmt: skip
    if tiny:
        command += ["agent.sb3.learning_starts=100", "agent.eval_freq=150", "agent.eval_episodes=1", "agent.net_arch=[16,16]"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])


def test_launcher_groups_compatible_jobs_and_skips_what_it_cannot_train(tmp_path):
    result = _sweep(tmp_path, "agent=dqn", "env=CartPole,Acrobot", "sparsity=dense,rigl", "seed=0,1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 runs in 2 population(s)" in result.stdout  # the envs differ: two populations of four
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("dqn/*/*/seed_*/summary.json")]  # the SB3 path's layout
    assert len(summaries) == 8 and all(s["status"] == "completed" and s["engine"] == "population" for s in summaries)
    duplicate = _sweep(tmp_path / "dup", "agent=dqn", "env=CartPole", "seed=0", "agent.sb3.gamma=0.99,0.9")
    assert "1 runs in 1 population(s)" in duplicate.stdout
    assert "another job of this sweep writes" in duplicate.stderr
    assert duplicate.returncode == 1 and "sweep: 2 job(s): 1 completed, 1 skipped" in duplicate.stderr
    skipped = _sweep(tmp_path / "ppo", "agent=ppo", "env=CartPole", "seed=0", "agent.n_envs=2", tiny=False)
    assert skipped.returncode == 1, skipped.stderr[-2000:]  # every job refused: refused before the sweep starts
    assert "the population engine needs agent.n_envs=1, agent.lr_schedule=constant or linear" in skipped.stderr
    assert not (tmp_path / "ppo" / "ppo").exists()


def test_launcher_resumes_a_killed_population(tmp_path):
    args = ["agent=dqn", "env=CartPole", "sparsity=rigl", "seed=0,1", "checkpoint_freq=100", "agent.total_timesteps=3000"]
    command = [sys.executable, "-m", "sparse_rl.run", "-m", "hydra/launcher=population", f"run_root={tmp_path}",
               "progress_bar=false", "tensorboard=false", "agent.sb3.learning_starts=100", "agent.eval_freq=500",
               "agent.eval_episodes=1", "agent.net_arch=[16,16]", *args]  # fmt: skip
    cwd = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metas = []
    for _ in range(600):
        metas = list(tmp_path.glob(".populations/*/checkpoint/meta.json"))
        if metas and json.loads(metas[0].read_text())["num_timesteps"] >= 1000:
            break
        if process.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    process.kill()  # SIGKILL
    process.wait()
    assert metas, "no checkpoint was written before the kill"
    resumed = subprocess.run([*command, "resume=true"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for seed in (0, 1):
        run_dir = tmp_path / "dqn" / "CartPole" / "rigl_s0.9" / f"seed_{seed}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["num_timesteps"] == 3000
        with np.load(run_dir / "evaluations.npz") as data:
            assert list(data["timesteps"]) == [500, 1000, 1500, 2000, 2500, 3000]
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_population_trains_with_the_configs_torch_settings(tmp_path, monkeypatch):
    """Like the SB3 path: ``torch_threads`` (default 1; parallel runs with more threads each slow down badly) and
    ``flush_denormal`` (experiment.numerics)."""
    from agents.population import trainer as trainer_module
    from experiment.population import run_jobs
    from tests.agent_helpers import flushes_denormals

    seen = []
    learn = trainer_module.PopulationTrainer.learn
    monkeypatch.setattr(
        trainer_module.PopulationTrainer,
        "learn",
        lambda self, *a, **kw: (seen.append((torch.get_num_threads(), flushes_denormals())), learn(self, *a, **kw)),
    )
    cfg = _plans("dqn", tmp_path, [(0, "dense")], "torch_threads=1", total=200)[0].cfg
    off = _plans("dqn", tmp_path / "off", [(0, "dense")], "torch_threads=1", "flush_denormal=false", total=200)[0].cfg
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # flushing starts off in every test (conftest)
    try:
        run_jobs([cfg], "cpu", False, 64)
        run_jobs([off], "cpu", False, 64)
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, True), (1, False)]


def test_every_population_agent_implements_the_protocol():
    """The trainer, builder and export ask the agent, never its type: each registered agent implements the protocol."""
    from inspect import getattr_static

    from agents.population.base import PopulationAgent
    from agents.population.compose import AGENT_CLASSES
    from agents.population.rollout import OnPolicyAgent

    required = ("from_config", "member_groups", "optimizers", "target_pairs", "env_actions", "eval_actions",
                "replay_action_dim", "update", "sb3_layer_pairs")  # fmt: skip
    off_policy = ("warmup_actions", "policy_actions")  # the off-policy loop's acting (agents.population.trainer)
    on_policy = tuple(name for name in vars(OnPolicyAgent) if not name.startswith("_"))  # the rollout loop's
    assert {"sample", "values", "train_log"} <= set(on_policy)
    for name, cls in AGENT_CLASSES.items():
        assert cls.name == name and cls.sb3_keys
        for method in (*required, *(on_policy if cls.on_policy else off_policy)):
            assert hasattr(cls, method), (name, method)
        missing = [
            m
            for m in (*required, *([] if cls.on_policy else off_policy))
            if getattr_static(cls, m) is getattr_static(PopulationAgent, m)
        ]
        assert not missing, (name, missing)
