"""Sparse TD3 (agent=td3): the delayed actor's clock, target masks, invariants, harness (tiny Pendulum budgets)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from stable_baselines3.common.noise import NormalActionNoise

from agents import AGENTS, attach_controller, build_model
from agents.population.compose import check_supported
from envs import make_vec_env
from experiment.plan import UsageError, plan_run
from experiment.population import plan_member
from experiment.sb3 import train
from sparse_rl.analyze import main as analyze_main
from sparse_rl.schedules import UpdateWindow
from tests.agent_helpers import compose_run, crash_after_checkpoint, tiny_run
from tests.test_agents import check_saved_model
from tests.test_controller import assert_invariants

POLICY_DELAY = 2  # configs/agent/td3.yaml
# tiny_run's sparsity.update_interval is 5: odd, so half the update points fall between two actor steps


def td3_model(method: str, tmp_path, *extra: str):
    """A tiny TD3 model with its controller, built as ``train`` builds it (without training)."""
    cfg = tiny_run("td3", method, tmp_path / "run", *extra)  # sparse methods: update_interval 5
    plan = plan_run(cfg)
    env = make_vec_env(plan.env, 1, 0)
    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    net_arch = OmegaConf.to_container(cfg.agent.net_arch)
    model = build_model(plan.agent, agent_cfg, env, net_arch=net_arch, sparse=method != "dense", seed=0, device="cpu")
    controller = attach_controller(model, plan.agent, plan.sparsity, cfg.agent.total_timesteps, seed=0)
    return cfg, model, controller


def expected_points(window: UpdateWindow) -> list[int]:
    """Update points of a window, written out independently of ``UpdateWindow.latest_point``."""
    points = list(range(window.start + window.interval, window.end, window.interval))
    return [*points, window.end] if window.end > window.start else points


@pytest.mark.parametrize("method", ["rigl", "prune"])
def test_topology_updates_follow_the_schedule_after_actor_steps(method, tmp_path):
    cfg, model, controller = td3_model(method, tmp_path)
    gradient_steps = cfg.agent.total_timesteps - cfg.agent.sb3.learning_starts  # train_freq 1, gradient_steps 1
    assert controller.total_steps == gradient_steps // POLICY_DELAY * POLICY_DELAY
    assert controller.tick_steps == model.policy_delay == POLICY_DELAY
    actor, critic = controller.groups
    assert (actor.name, actor.target, critic.name, critic.target) == (
        "actor",
        model.actor_target,
        "critic",
        model.critic_target,
    )
    actor_steps = []
    model.actor.optimizer.register_step_pre_hook(lambda *args: actor_steps.append(model._n_updates))
    critic_grads = {}  # the last critic step's (masked) gradient: the actor's backward later adds to critic .grad

    def keep_critic_grads(*args) -> None:
        critic_grads.update({layer.name: layer.weight.grad.clone() for layer in critic.layers})

    model.critic.optimizer.register_step_post_hook(keep_critic_grads)
    records = []  # (update point, clock, SB3's _n_updates, _n_updates at the last actor step, groups whose masks moved)
    update = controller._update

    def recorded_update(t: int) -> bool:
        old = {(group.name, layer.name): layer.mask.clone() for group in controller.groups for layer in group.layers}
        if method == "rigl":  # the grow scores: the dense gradient of the actor step that just ran, and the critic's
            for group in controller.groups:
                # (a single layer's may be 0 there: a hidden unit whose inputs are all masked is dead under ReLU)
                assert sum(torch.count_nonzero(layer.dense_grad[~layer.mask]) for layer in group.layers) > 0, group.name
            for layer in actor.layers:  # .grad is that step's gradient, masked after the snapshot
                assert torch.equal(layer.weight.grad, layer.dense_grad * layer.mask)
            for layer in critic.layers:  # the critic step just before (same batch), not the actor loss's gradient
                assert torch.equal(critic_grads[layer.name], layer.dense_grad * layer.mask)
                if layer.name.startswith("qf0."):  # the actor loss runs through the first critic only (q1_forward)
                    assert not torch.equal(layer.weight.grad, critic_grads[layer.name])
        changed = update(t)
        final = method != "prune" or t == controller.updater.window.end
        assert_invariants(SimpleNamespace(controller=controller), exact_counts=final)
        moved = set()
        for group in controller.groups:
            for layer in group.layers:
                diff = layer.mask ^ old[group.name, layer.name]
                for value in layer.optimizer_state(group.optimizer):
                    assert torch.all(value[diff] == 0), (group.name, layer.name)  # Adam m, v reset where it changed
                if diff.any():
                    moved.add(group.name)
        records.append((t, controller.clock, model._n_updates, actor_steps[-1], moved))
        return changed

    controller._update = recorded_update
    model.learn(cfg.agent.total_timesteps)
    window = controller.updater.window
    assert [r[0] for r in records] == expected_points(window)
    assert controller.num_updates == len(expected_points(window))
    for point, clock, n_updates, last_actor_step, _ in records:
        assert clock == n_updates == last_actor_step  # right after an actor step, clock in gradient steps
        assert 0 <= clock - point < POLICY_DELAY  # at the first actor step at or after the point
    assert records[-1][0] == window.end == round(0.8 * controller.total_steps)
    late = set().union(*(moved for point, *_, moved in records if point > controller.total_steps // 2))
    assert late == {"actor", "critic"}  # both groups' schedules span the run
    controller.check_invariants()
    assert_invariants(SimpleNamespace(controller=controller), exact_counts=True)
    assert controller.final_allocation_problem() is None


def test_targets_stay_masked_through_polyak_updates(tmp_path):
    """After training, Polyak averaging kept targets zero outside the online masks (they never hold masked weights)."""
    _, model, _ = td3_model("rigl", tmp_path)
    model.learn(300)
    for target, online in ((model.actor_target, model.actor), (model.critic_target, model.critic)):
        for (name, t_layer), (_, o_layer) in zip(target.named_modules(), online.named_modules()):
            if hasattr(o_layer, "weight_mask"):
                assert torch.equal(t_layer.weight_mask, o_layer.weight_mask), name
                assert torch.all(t_layer.weight[~o_layer.weight_mask] == 0), name
                assert not torch.equal(t_layer.weight, o_layer.weight)  # a real (Polyak) target, not a copy


def test_defaults_noise_decay_and_init(tmp_path):
    cfg, model, _ = td3_model("dense", tmp_path, "agent.weight_decay=1e-4")
    assert isinstance(model.action_noise, NormalActionNoise)
    assert model.action_noise._sigma.tolist() == [cfg.agent.exploration_noise] * model.action_space.shape[0]
    assert (model.policy_delay, model.target_policy_noise, model.target_noise_clip) == (2, 0.2, 0.5)
    for optimizer in (model.actor.optimizer, model.critic.optimizer):  # Keras wd*sum(w^2) on kernels: 2*wd each
        decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
        assert decays.pop("no_decay") == 0.0 and list(decays.values()) == [pytest.approx(2e-4)]
    for online, target in ((model.actor, model.actor_target), (model.critic, model.critic_target)):
        for name, value in online.state_dict().items():  # paper init re-drawn, then copied into the targets
            assert torch.equal(value, target.state_dict()[name]), name
    output = model.actor.mu[-2]  # Glorot-uniform with the output layer's own fans, zero bias
    bound = (6 / (output.in_features + output.out_features)) ** 0.5
    assert output.weight.abs().max() <= bound and torch.all(output.bias == 0)
    assert output.weight.abs().max() > 0.8 * bound


def test_bad_exploration_noise_is_one_line(tmp_path):
    for overrides, message in (
        (["agent=td3", "agent.exploration_noise=-0.1"], r"agent\.exploration_noise must be >= 0, got -0\.1 \(the std"),
        (["agent=sac", "agent.exploration_noise=0.1"], "agent 'sac' needs agent.exploration_noise=null"),
    ):
        with pytest.raises(UsageError, match=message):
            plan_run(compose_run([*overrides, "env=Pendulum", f"run_dir={tmp_path / 'x'}"]))


@pytest.mark.parametrize("method", ["dense", "static", "set", "rigl", "prune"])
def test_trains_and_saves_exact_sparse_models(method, tmp_path):
    summary = train(plan_run(tiny_run("td3", method, tmp_path / "run")))
    assert summary["status"] == "completed" and summary["checks"]["final_allocation"] == "passed"
    assert (summary["topology"]["num_updates"] > 0) == (method in ("set", "rigl", "prune"))
    if method != "dense":
        assert summary["params"]["active"] == pytest.approx(0.1 * summary["params"]["total"], rel=0.01)
    check_saved_model("td3", method, tmp_path / "run", summary)


def test_dense_matched_and_wide_match_parameter_counts(tmp_path):
    sparse = train(plan_run(tiny_run("td3", "static", tmp_path / "sparse")))
    matched = train(plan_run(tiny_run("td3", "dense_matched", tmp_path / "matched")))
    assert matched["params"]["active"] == matched["params"]["total"]
    for group, report in matched["equal_parameters"].items():
        ours, target = matched["groups"][group]["active_with_bias"], sparse["groups"][group]["active_with_bias"]
        assert ours == report["params"] and report["target"] == target
        assert abs(ours - target) <= max(0.01 * target, 2 * max(report["hidden"]) + 100), (group, ours, target)
    dense = train(plan_run(tiny_run("td3", "dense", tmp_path / "dense")))
    wide = train(plan_run(tiny_run("td3", "static", tmp_path / "wide", "sparsity.wide=true")))
    assert wide["net_arch"]["pi"][0] > 32 and wide["net_arch"]["qf"][0] > 32
    for group in ("actor", "critic"):
        assert wide["groups"][group]["active_with_bias"] == pytest.approx(dense["groups"][group]["total_with_bias"], rel=0.01)


def test_sweep_then_analysis(tmp_path):
    root = tmp_path / "runs"
    command = [
        sys.executable, "-m", "sparse_rl.run", "-m", "hydra/launcher=local", "hydra.launcher.n_jobs=1", "agent=td3",
        "sparsity=dense,rigl", "env=Pendulum", "agent.total_timesteps=300", "agent.sb3.learning_starts=100",
        "agent.sb3.buffer_size=1000", "agent.net_arch=[16,16]", "agent.eval_freq=150", "agent.eval_episodes=1",
        "sparsity.update_interval=5", "progress_bar=false", "tensorboard=false", f"run_root={root}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(str(p.parent.relative_to(root)) for p in root.rglob("summary.json"))
    assert runs == ["td3/Pendulum/dense_s0.0/seed_0", "td3/Pendulum/rigl_s0.9/seed_0"]
    assert analyze_main([str(root), "--reps", "20", "--no-plots"]) == 0
    with open(root / "analysis" / "aggregate.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(row["agent"], row["label"]) for row in rows} == {("td3", "dense_s0.0"), ("td3", "rigl_s0.9")}


def saved_masks(run_dir) -> dict[str, torch.Tensor]:
    state = AGENTS.get("td3").algo.load(run_dir / "model.zip").policy.state_dict()
    return {key: value for key, value in state.items() if key.endswith("weight_mask")}


def test_resume_round_trip_and_refused_policy_delay_change(tmp_path, monkeypatch):
    overrides = [
        "agent=td3", "sparsity=rigl", "checkpoint_freq=200", "env=Pendulum", "agent.total_timesteps=300",
        "agent.sb3.learning_starts=100", "agent.sb3.buffer_size=1000", "agent.net_arch=[32,32]", "agent.eval_freq=100",
        "agent.eval_episodes=1", "progress_bar=false", "tensorboard=false", "sparsity.update_interval=5",
    ]  # fmt: skip
    resumed = [*overrides, f"run_dir={tmp_path / 'run'}"]
    with crash_after_checkpoint(monkeypatch):
        train(plan_run(compose_run(resumed)))
    assert json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["num_timesteps"] == 200
    with pytest.raises(UsageError, match=r"agent\.sb3\.policy_delay"):
        plan_run(compose_run([*resumed, "resume=true", "agent.sb3.policy_delay=3"]))
    summary = train(plan_run(compose_run([*resumed, "resume=true"])))
    assert summary["status"] == "completed" and summary["num_timesteps"] == 300
    straight = train(plan_run(compose_run([*overrides, f"run_dir={tmp_path / 'straight'}"])))
    assert summary["topology"] == straight["topology"]  # the same schedule, resumed or not
    ours, theirs = saved_masks(tmp_path / "run"), saved_masks(tmp_path / "straight")
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)  # and the same masks (exact resume)


def test_population_engine_accepts_td3_and_refuses_its_unimplemented_keys_in_one_line(tmp_path):
    """Issue 21: the population engine trains TD3 (tests/test_population_td3.py); what it does not implement is
    refused before anything is created, as for SAC and DQN."""
    cfg = tiny_run("td3", "rigl", tmp_path / "run")
    check_supported(cfg)
    assert plan_member(cfg).cfg.agent.name == "td3"  # what the population launcher validates each job with
    cfg.agent.n_envs = 2
    with pytest.raises(UsageError, match=r"^the population engine needs agent.n_envs=1, "):
        plan_member(cfg)
    assert not (tmp_path / "run").exists()


def test_help_lists_td3():
    result = subprocess.run([sys.executable, "-m", "sparse_rl.run", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "td3" in result.stdout and "agent=td3" in result.stdout
    assert AGENTS.get("td3").name == "td3"
