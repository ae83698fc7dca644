"""PPO members: one population minibatch step equals SB3's ``PPO.train`` step of each member (same weights, masks,
minibatch); a member alone equals the member inside a population; sparse invariants on every member."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch import nn

from agents import AGENTS, attach_controller
from agents.decay import kernel_decay
from agents.population.export import copy_member
from agents.population.ppo import PopulationPPO
from agents.ppo import SparsePPOPolicy
from envs import load_env_spec, make_vec_env
from sparse_rl.controller import TopologyController
from tests.conftest import core_config
from tests.test_population_parity import _assert_member_equals

B, HIDDEN, LR = 16, [32, 32], 3e-3
WD = 1e-2  # large, so a decay of the wrong parameters or with the wrong coefficient shows
OPTIMIZER_KWARGS = {"fused": True, "eps": 1e-5}
ENVS = {"box": "Pendulum", "discrete": "CartPole"}
EPOCHS, MINIBATCHES = 2, 2  # SB3's loop: n_epochs passes over the rollout in minibatches


def _sb3_ppo(seed: int, method: str, kind: str, clip_range_vf: float | None, ent_coef: float) -> PPO:
    env = make_vec_env(load_env_spec(ENVS[kind]), 1, seed)
    policy_kwargs = {
        "net_arch": HIDDEN, "activation_fn": nn.Tanh, "optimizer_kwargs": OPTIMIZER_KWARGS, "log_std_init": -0.5,
        "ortho_init": True, "kernel_decay": kernel_decay("ppo", WD, None),
    }  # fmt: skip
    model = PPO(
        SparsePPOPolicy, env, learning_rate=LR, n_steps=B * MINIBATCHES, batch_size=B, n_epochs=EPOCHS, seed=seed,
        device="cpu", clip_range=0.2, clip_range_vf=clip_range_vf, ent_coef=ent_coef, vf_coef=0.5, max_grad_norm=0.5,
        policy_kwargs=policy_kwargs,
    )  # fmt: skip
    attach_controller(model, AGENTS.get("ppo"), core_config(method, 0.8), total_timesteps=10_000, seed=seed)
    model.set_logger(configure(None, []))
    return model


def _population(models: list[PPO], kind: str, clip_range_vf: float | None, ent_coef: float) -> PopulationPPO:
    k, env = len(models), models[0].get_env()
    decay = kernel_decay("ppo", WD, None)
    pop = PopulationPPO(
        k, env.observation_space.shape[0], env.action_space, HIDDEN, HIDDEN, "Tanh", learning_rate=LR, clip_range=0.2,
        clip_range_vf=clip_range_vf, normalize_advantage=True, ent_coef=ent_coef, vf_coef=0.5, max_grad_norm=0.5,
        optimizer_kwargs=OPTIMIZER_KWARGS, actor_decay=[decay["actor"]] * k, critic_decay=[decay["critic"]] * k,
        device=torch.device("cpu"),
    )  # fmt: skip
    for member, model in enumerate(models):
        copy_member(pop, member, model, to_sb3=False)
        _assert_member_equals(pop, member, model, atol=0)
    return pop


def _minibatches(model: PPO, generator: torch.Generator) -> list[RolloutBufferSamples]:
    """EPOCHS × MINIBATCHES minibatches around the model's current policy: old log-probs and values perturbed, so
    ratios leave the clip range and (with ``clip_range_vf``) values are clipped."""
    space, obs_dim = model.action_space, model.observation_space.shape[0]
    batches = []
    for _ in range(EPOCHS * MINIBATCHES):
        obs = torch.randn(B, obs_dim, generator=generator)
        if hasattr(space, "n"):
            actions = torch.randint(0, int(space.n), (B, 1), generator=generator).float()
        else:
            actions = torch.randn(B, space.shape[0], generator=generator)
        with torch.no_grad():
            acts = actions.long().flatten() if hasattr(space, "n") else actions
            values, log_prob, _ = model.policy.evaluate_actions(obs, acts)
        batches.append(
            RolloutBufferSamples(
                observations=obs,
                actions=actions,
                old_values=values.flatten() + 0.5 * torch.randn(B, generator=generator),
                old_log_prob=log_prob + 0.3 * torch.randn(B, generator=generator),
                advantages=torch.randn(B, generator=generator),
                returns=torch.randn(B, generator=generator),
            )
        )
    return batches


def _stacked(batches: list[RolloutBufferSamples]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.stack([getattr(b, f) for b in batches]) for f in RolloutBufferSamples._fields)


def _sb3_train(model: PPO, batches: list[RolloutBufferSamples]) -> None:
    """SB3's ``PPO.train`` on these minibatches (``rollout_buffer.get`` yields one epoch's minibatches per call)."""
    epochs = iter([batches[e * MINIBATCHES : (e + 1) * MINIBATCHES] for e in range(EPOCHS)])
    model.rollout_buffer.get = lambda batch_size=None: iter(next(epochs))
    model.train()


@pytest.mark.parametrize(
    ("kind", "methods", "clip_range_vf", "ent_coef"),
    [
        ("box", ["rigl", "static", "dense"], None, 0.0),  # our configs/agent/ppo.yaml's losses
        ("box", ["set", "dense"], 0.2, 0.01),  # value clipping and an entropy bonus
        ("discrete", ["rigl", "dense", "prune"], 0.2, 0.01),
        ("discrete", ["static"], None, 0.0),
    ],
)
def test_ppo_population_epoch_equals_sb3_train_per_member(kind, methods, clip_range_vf, ent_coef):
    """Issue 21: each member's weights, log-std and masks after SB3's epochs of minibatch steps (clipped surrogate,
    value loss, entropy, the gradient-norm clip over dense gradients, masks and kernel decay at the optimizer step,
    Adam) equal the population's after the same minibatch steps."""
    models = [_sb3_ppo(seed, method, kind, clip_range_vf, ent_coef) for seed, method in enumerate(methods)]
    pop = _population(models, kind, clip_range_vf, ent_coef)
    generator = torch.Generator().manual_seed(5)
    per_member = [_minibatches(model, generator) for model in models]
    for model, batches in zip(models, per_member):
        _sb3_train(model, batches)
    steps = [pop.update(*_stacked([batches[step] for batches in per_member])) for step in range(EPOCHS * MINIBATCHES)]
    assert sum(m["clip_fraction"].sum() for m in steps) > 0, "no ratio left the clip range: the surrogate's clip is untested"
    for member, model in enumerate(models):  # the logged values, aggregated as SB3's train() (the rollout loop's way)
        logged = model.logger.name_to_value
        for key in ("policy_gradient_loss", "value_loss", "entropy_loss", "clip_fraction"):
            ours = float(torch.stack([m[key][member] for m in steps]).mean())
            assert ours == pytest.approx(logged[f"train/{key}"], rel=1e-5, abs=1e-7), key
        last_epoch = steps[-MINIBATCHES:]  # SB3 logs approx_kl over the last epoch only
        ours = float(torch.stack([m["approx_kl"][member] for m in last_epoch]).mean())
        assert ours == pytest.approx(logged["train/approx_kl"], rel=1e-5, abs=1e-7)
    for member, model in enumerate(models):
        _assert_member_equals(pop, member, model, atol=5e-6)
        if kind == "box":
            torch.testing.assert_close(pop.log_std[member].detach(), model.policy.log_std.detach(), atol=5e-6, rtol=1e-5)
        for layer in pop.sparse_layers():
            assert torch.count_nonzero(layer.weight[member][~layer.weight_mask[member]]) == 0


def test_ppo_population_step_differs_from_sb3_when_the_clip_scope_is_wrong(monkeypatch):
    """The parity above can fail: SB3's clip norm includes the gradients at inactive positions; clipping after the
    masks instead (a smaller norm, a weaker clip) makes a sparse member's step differ from SB3's."""
    import agents.population.ppo as ppo_module
    from agents.population.base import clip_member_grad_norm_
    from sparse_rl.batched import mask_gradients_

    models = [_sb3_ppo(0, "static", "box", None, 0.0)]
    pop = _population(models, "box", None, 0.0)
    batches = _minibatches(models[0], torch.Generator().manual_seed(3))
    _sb3_train(models[0], batches)

    def masked_first(params, k, max_norm):
        mask_gradients_(pop.sparse_layers())
        return clip_member_grad_norm_(params, k, max_norm)

    monkeypatch.setattr(ppo_module, "clip_member_grad_norm_", masked_first)
    for step in range(EPOCHS * MINIBATCHES):
        pop.update(*_stacked([batches[step]]))
    with pytest.raises(AssertionError):
        _assert_member_equals(pop, 0, models[0], atol=5e-6)


@pytest.mark.parametrize("kind", ["box", "discrete"])
def test_a_ppo_member_steps_bit_identically_alone_and_in_a_population(kind):
    """Decision 34: a member's numbers do not depend on the population (K = 1 vs K = 3, same member in row 1)."""
    models = [_sb3_ppo(seed, method, kind, 0.2, 0.01) for seed, method in enumerate(["rigl", "static", "dense"])]
    generator = torch.Generator().manual_seed(11)
    per_member = [_minibatches(model, generator) for model in models]
    trio = _population(models, kind, 0.2, 0.01)
    alone = _population(models[1:2], kind, 0.2, 0.01)
    for step in range(EPOCHS * MINIBATCHES):
        trio.update(*_stacked([batches[step] for batches in per_member]))
        alone.update(*_stacked([per_member[1][step]]))
    for ours, theirs in zip(alone.parameters_per_member(), trio.parameters_per_member()):
        assert torch.equal(ours[0], theirs[1])
    for ours, theirs in zip(alone.parameters_per_member(), trio.parameters_per_member()):
        for name, value in alone.optimizer.state[ours].items():
            if value.dim() > 0:
                assert torch.equal(value[0], trio.optimizer.state[theirs][name][1]), name


def test_ppo_members_keep_sparse_invariants_through_topology_updates():
    """Each member's own controller on its rows: exact active counts, masked weights and Adam moments 0 after RigL
    and SET updates, Adam state reset at regrown positions, the other member's state untouched."""
    methods = ["rigl", "set"]
    models = [_sb3_ppo(seed, method, "box", None, 0.0) for seed, method in enumerate(methods)]
    pop = _population(models, "box", None, 0.0)
    config = {m: core_config(m, 0.8, update_interval=2) for m in methods}
    controllers = []
    for member, method in enumerate(methods):
        controller = TopologyController(pop.member_groups(member), config[method], 40, member)
        controller.init_masks(existing=True)
        controllers.append(controller)
    generator = torch.Generator().manual_seed(2)
    batches = [_minibatches(model, generator) for model in models]
    changed_any = False
    for step in range(1, 9):
        snapshot = any(c.wants_dense_grad(step) for c in controllers)
        pop.update(*_stacked([b[step % len(b)] for b in batches]), snapshot_dense=snapshot)
        kernel = pop.actor.layers[1].weight
        before_state = {n: v.clone() for n, v in pop.optimizer.state[kernel].items() if v.dim() > 0}
        before_masks = [layer.weight_mask.clone() for layer in pop.sparse_layers()]
        for controller in controllers:
            if controller.step(step):
                pop.refresh_masks()
        for layer, old in zip(pop.sparse_layers(), before_masks):
            grown = layer.weight_mask & ~old
            changed_any |= bool(grown.any())
            if layer.weight is kernel and grown.any():
                for name, value in pop.optimizer.state[kernel].items():
                    if value.dim() > 0:
                        assert torch.count_nonzero(value[grown]) == 0, name  # reset at regrown positions
                        kept = ~(grown | (old & ~layer.weight_mask))
                        assert torch.equal(value[kept], before_state[name][kept])
        for controller in controllers:
            controller.check_invariants()
            for group in controller.groups:
                for layer in group.layers:
                    assert layer.active == layer.allocated, layer.name
                    assert torch.count_nonzero(layer.weight[~layer.mask]) == 0
                    for state in layer.optimizer_state(None):
                        assert torch.count_nonzero(state[~layer.mask]) == 0
    assert changed_any, "no topology update changed a mask: the invariants were not exercised"


# ---------------------------------------------------------------------------------------------- the rollout loop
N_STEPS, TOTAL = 64, 300  # 5 rollouts of 64 (SB3 completes the last one past the budget): 320 env steps


def _ppo_plans(root, members, env: str = "CartPole", *extra: str):
    from experiment.population import plan_member
    from tests.agent_helpers import compose_run

    plans = []
    for seed, method in members:
        cfg = compose_run([
            "agent=ppo", f"env={env}", f"sparsity={method}", f"seed={seed}", f"agent.total_timesteps={TOTAL}",
            f"agent.sb3.n_steps={N_STEPS}", "agent.sb3.batch_size=32", "agent.sb3.n_epochs=2", "agent.normalize=false",
            "agent.eval_freq=128", "agent.eval_episodes=2", "agent.net_arch=[32,32]", "sparsity.update_interval=5",
            "progress_bar=false", "tensorboard=false", "diagnostics.freq=0", f"run_dir={root}/{method}_{seed}", *extra,
        ])  # fmt: skip
        plans.append(plan_member(cfg))
    return plans


def _ppo_run(root, members, env: str = "CartPole", *extra: str):
    from experiment.population_records import PopulationRun

    return PopulationRun(_ppo_plans(root, members, env, *extra), [32, 32], root / "population", "cpu", False)


def _ppo_member_state(run, seed: int) -> dict[str, torch.Tensor]:
    member = next(m for m in run.members if m.seed == seed)
    state = {"log_std": run.agent.log_std[member.index].detach()}
    for group in member.controller.groups:
        for layer in group.layers:
            name = f"{group.name}/{layer.name}"
            state[f"{name}/weight"], state[f"{name}/bias"] = layer.weight.detach(), layer.module.bias.detach()
            state[f"{name}/mask"] = layer.mask
            for j, moment in enumerate(layer.optimizer_state(None)):
                state[f"{name}/adam{j}"] = moment
    return state


def test_ppo_population_writes_the_sb3_paths_run_directory(tmp_path):
    """End to end: SB3's whole rollouts (320 env steps for 300), one progress row per rollout with SB3's train/
    keys and linear learning-rate schedule, evaluations, summary.json, a model.zip PPO.load reads with the member's
    weights and masks; every member's sparse invariants hold."""
    from stable_baselines3 import PPO

    from tests.test_population import _assert_member_invariants

    run = _ppo_run(tmp_path, [(0, "dense"), (1, "rigl"), (2, "set")], "CartPole", "agent.lr_schedule=linear")
    run.learn()
    assert run.num_timesteps == 320 and run.loop.clock == 5 * 2 * 2  # rollouts x epochs x minibatches
    _assert_member_invariants(run)
    assert [m.controller.num_updates > 0 for m in run.members] == [False, True, True]
    summaries = run.finish()
    assert [s["status"] for s in summaries] == ["completed"] * 3
    for (seed, method), summary in zip([(0, "dense"), (1, "rigl"), (2, "set")], summaries):
        run_dir = tmp_path / f"{method}_{seed}"
        rows = _progress_rows(run_dir)
        iterations = [r["time/iterations"] for r in rows if r.get("time/iterations")]
        assert iterations == ["1", "2", "3", "4", "5"]
        # a row has the values of the last train() before it (SB3's logger: an evaluation inside a rollout takes them)
        trained = [r for r in rows if r.get("train/value_loss")]
        assert [int(r["time/total_timesteps"]) for r in trained] == [128, 192, 256, 320]  # evaluations at 128, 256
        assert all(r["train/n_updates"] and r["train/clip_range"] == "0.2" for r in trained)
        for row in trained:  # SB3's linear schedule at the progress after the rollout that train() used
            done = (int(row["time/total_timesteps"]) - 1) // N_STEPS * N_STEPS
            assert int(row["train/n_updates"]) == done // N_STEPS * 2  # SB3's PPO counts epochs
            assert float(row["train/learning_rate"]) == pytest.approx(3e-4 * (1 - done / TOTAL), rel=1e-12)
        with np.load(run_dir / "evaluations.npz") as data:
            assert list(data["timesteps"]) == [128, 256]
        model = PPO.load(run_dir / "model.zip", device="cpu")
        assert model.num_timesteps == 320
        member = next(m for m in run.members if m.seed == seed)
        for batched, row, linears in run.agent.sb3_layer_pairs(member.index, model):
            assert torch.equal(batched.weight[row], linears[0].weight.detach())
            if method != "dense":  # dense models carry no masks
                assert torch.equal(batched.weight_mask[row], linears[0].weight_mask)
        assert summary["params"]["active"] == (summary["params"]["total"] if method == "dense" else 240)


def _progress_rows(run_dir):
    import csv

    with open(run_dir / "progress.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("time/fps", "time/time_elapsed")} for row in csv.DictReader(f)]


@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_a_ppo_member_trains_bit_identically_alone_and_in_a_population(env, tmp_path):
    """Decisions 34 and 41: a member's rollouts, minibatch orders and updates are its own."""
    alone = _ppo_run(tmp_path / "alone", [(3, "rigl")], env)
    alone.learn()
    trio = _ppo_run(tmp_path / "trio", [(5, "set"), (3, "rigl"), (0, "dense")], env)
    trio.learn()
    assert alone.members[0].controller.num_updates > 0
    reference, state = _ppo_member_state(alone, 3), _ppo_member_state(trio, 3)
    assert state.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(state[key], tensor), key
    assert alone.members[0].eval_results == trio.members[1].eval_results
    assert _progress_rows(tmp_path / "alone" / "rigl_3") == _progress_rows(tmp_path / "trio" / "rigl_3")


@pytest.mark.parametrize("stop", [100, 128])  # inside a rollout; at a rollout's end (after its training)
def test_ppo_population_resumes_exactly_from_its_checkpoint(stop, tmp_path):
    from agents.callbacks import TrainingStopped

    members = [(0, "rigl"), (1, "dense")]
    straight = _ppo_run(tmp_path / "straight", members, "Pendulum")
    straight.learn()
    first = _ppo_run(tmp_path / "resumed", members, "Pendulum")
    with pytest.raises(TrainingStopped):
        first.learn(stop=lambda: first.num_timesteps >= stop)
    first.close()
    resumed = _ppo_run(tmp_path / "resumed", members, "Pendulum", "resume=true")
    resumed.load_checkpoint()
    assert resumed.num_timesteps == stop and resumed.loop.pos == stop % N_STEPS
    resumed.learn()
    for name, tensor in straight.agent.state_dict().items():
        assert torch.equal(tensor, resumed.agent.state_dict()[name]), name
    for a, b in zip(straight.members, resumed.members):
        assert a.eval_results == b.eval_results
        assert a.controller.num_updates == b.controller.num_updates


def test_gae_and_timeout_bootstrap_follow_sb3s_rollout_buffer(tmp_path):
    """SB3's RolloutBuffer.compute_returns_and_advantage on the loop's stored rollout gives its advantages and
    returns; a step cut by the time limit (Pendulum: 200) stored the env's reward + γ·V(terminal observation)."""
    from stable_baselines3.common.buffers import RolloutBuffer

    run = _ppo_run(tmp_path, [(0, "dense"), (1, "rigl")], "Pendulum", "agent.sb3.n_steps=256", "agent.total_timesteps=256")
    loop = run.loop
    seen = []
    step = loop.envs.step

    def recording_step(actions, active=None):
        result = step(actions, active)
        seen.append(result)
        return result

    loop.envs.step = recording_step
    train = loop._train
    captured = {}

    def capture_then_train():  # before the training changes the values
        captured["advantages"], captured["returns"] = loop.advantages_and_returns()
        captured["buffer"] = {k: v.clone() for k, v in loop.buffer.items()}
        with torch.no_grad():
            captured["terminal"] = run.agent.values(run.agent._obs_tensor(seen[199].real_next_obs))[:, 0]
            captured["last"] = run.agent.values(run.agent._obs_tensor(seen[-1].next_obs))[:, 0]
        train()

    loop._train = capture_then_train
    for member in run.members:
        run._open_run_dir(member)
    loop.learn(run)
    buffer = captured["buffer"]
    truncated_at = [i for i, r in enumerate(seen) if r.dones.any()]
    assert truncated_at == [199]  # Pendulum's time limit: both members' episodes end there, truncated
    expected = torch.as_tensor(seen[199].rewards) + 0.99 * captured["terminal"]
    torch.testing.assert_close(buffer["rewards"][199], expected, rtol=0, atol=0)
    for member in range(2):
        sb3 = RolloutBuffer(256, run.agent.action_space, run.agent.action_space, gae_lambda=0.95, gamma=0.99, n_envs=1)
        sb3.rewards[:, 0] = buffer["rewards"][:, member].numpy()
        sb3.values[:, 0] = buffer["values"][:, member].numpy()
        sb3.episode_starts[:, 0] = buffer["episode_starts"][:, member].numpy()
        last = captured["last"][member : member + 1]
        sb3.compute_returns_and_advantage(last, np.asarray(seen[-1].dones[member : member + 1]))
        assert torch.equal(captured["advantages"][:, member], torch.as_tensor(sb3.advantages[:, 0]))  # SB3's ops
        assert torch.equal(captured["returns"][:, member], torch.as_tensor(sb3.returns[:, 0]))


def test_launcher_trains_and_resumes_a_killed_ppo_population(tmp_path):
    """Through ``hydra/launcher=population``: PPO jobs form one population; killed (SIGKILL) after a checkpoint
    inside a rollout, ``resume=true`` completes every member with the uninterrupted run's evaluations."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    args = ["agent=ppo", "env=CartPole", "sparsity=rigl", "seed=0,1", "agent.normalize=false", "checkpoint_freq=100",
            "agent.total_timesteps=1600", "agent.sb3.n_steps=64", "agent.sb3.batch_size=32",
            "agent.sb3.n_epochs=2"]  # fmt: skip
    command = [sys.executable, "-m", "sparse_rl.run", "-m", "hydra/launcher=population", "progress_bar=false",
               "tensorboard=false", "agent.eval_freq=500", "agent.eval_episodes=1", "agent.net_arch=[16,16]",
               *args]  # fmt: skip
    cwd = Path(__file__).resolve().parents[1]
    straight = subprocess.run([*command, f"run_root={tmp_path / 'straight'}"], cwd=cwd, capture_output=True, text=True)
    assert straight.returncode == 0 and "2 runs in 1 population(s)" in straight.stdout, straight.stderr[-2000:]
    root = tmp_path / "killed"
    process = subprocess.Popen([*command, f"run_root={root}"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metas = []
    for _ in range(600):
        metas = list(root.glob(".populations/*/checkpoint/meta.json"))
        if (metas and json.loads(metas[0].read_text())["num_timesteps"] >= 600) or process.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    process.kill()
    process.wait()
    assert metas and process.returncode == -9, "the population was not killed after a checkpoint"
    resumed = subprocess.run([*command, f"run_root={root}", "resume=true"], cwd=cwd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for seed in (0, 1):
        found = {}
        for name in ("straight", "killed"):
            run_dir = tmp_path / name / "ppo" / "CartPole" / "rigl_s0.9" / f"seed_{seed}"
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["status"] == "completed" and summary["num_timesteps"] == 1600  # 25 whole rollouts
            with np.load(run_dir / "evaluations.npz") as data:
                found[name] = (list(data["timesteps"]), data["results"].tolist())
        assert found["killed"] == found["straight"] and found["straight"][0] == [500, 1000, 1500]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+agent.sb3.use_sde=true", r"^the population engine does not implement agent.sb3.use_sde; supported: "),
        ("agent.n_envs=2", r"^the population engine needs agent.n_envs=1, agent.lr_schedule=constant or linear$"),
    ],
)
def test_what_the_ppo_members_do_not_implement_is_refused_in_one_line(override, message):
    from agents.population.compose import PopulationConfigError, check_supported
    from tests.agent_helpers import compose_run

    cfg = compose_run(["agent=ppo", "env=CartPole", "agent.normalize=false", override])
    with pytest.raises(PopulationConfigError, match=message):
        check_supported(cfg)


def test_a_diverging_ppo_member_fails_alone(tmp_path):
    run = _ppo_run(tmp_path, [(0, "dense"), (1, "rigl"), (2, "set")], "Pendulum", "nan_check_freq=64")
    with torch.no_grad():
        run.agent.critic.layers[0].weight[1].fill_(float("nan"))
    run.learn(nan_check_freq=64)
    summaries = run.finish()
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert "non-finite" in summaries[1]["error"]  # its NaN value loss reaches the actor too, through the shared loss
    assert all(np.isfinite(s["score"]) for s in (summaries[0], summaries[2]))
    for member in (0, 2):
        assert all(torch.isfinite(p[member]).all() for p in run.agent.parameters_per_member())


@pytest.mark.parametrize("kind", ["box", "discrete"])
def test_a_rollouts_draws_at_once_are_the_draws_step_by_step(kind):
    """The loop draws a rollout's acting noise in one call; each row is what the member's stream gives at that env
    step alone (so a member's actions do not depend on where a rollout starts or resumes)."""
    from agents.population.streams import Draw, MemberStreams

    models = [_sb3_ppo(seed, "dense", kind, None, 0.0) for seed in (4, 9)]
    pop = _population(models, kind, None, 0.0)
    streams = MemberStreams([4, 9], torch.device("cpu"))
    rollout, n_steps = 3, 32
    noise = pop.rollout_noise(streams, rollout, n_steps)
    for i in (0, 1, 17, 31):
        step = rollout * n_steps + i
        if kind == "box":
            expected = streams.normal(Draw.ACT_NOISE, step, pop.act_dim)
        else:
            expected = streams.uniform(Draw.ACT_NOISE, step, 1).to(torch.float32)
        assert torch.equal(noise[:, i], expected)
    assert not torch.equal(noise[0], noise[1])
