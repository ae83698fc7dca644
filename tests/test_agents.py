"""Sparse DQN, SAC and PPO on SB3: every agent x method trains and keeps the sparse invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents import AGENTS, attach_controller
from experiment.plan import plan_run
from experiment.sb3 import train
from experiment.schema import core_sparsity_config
from sparse_rl import UPDATERS
from sparse_rl.distributions import allocate_joint
from sparse_rl.masks import find_maskable_layers
from tests.agent_helpers import tiny_run

METHODS = UPDATERS.names()  # every registered method: a new one falls under these tests
# Which SB3 modules form each group, and which module mirrors it as a target.
NETWORKS = {
    "sac": {"actor": ("actor", None), "critic": ("critic", "critic_target")},
    "dqn": {"q": ("q_net", "q_net_target")},
    "td3": {"actor": ("actor", "actor_target"), "critic": ("critic", "critic_target")},
}


def check_saved_model(agent: str, method: str, run_dir: Path, summary: dict) -> None:
    model = AGENTS.get(agent).algo.load(run_dir / "model.zip")
    state = model.policy.state_dict()
    masks = {k: v for k, v in state.items() if k.endswith("weight_mask")}
    if method == "dense":
        assert not masks
        return
    assert masks, "a sparse policy must save its masks"
    for key, mask in masks.items():
        assert torch.all(state[key.replace("weight_mask", "weight")][~mask] == 0), key
    # active counts per group equal an independent ERK allocation of the configured sparsity, with SAC's two actor
    # heads (mu, log_std) allocated as the paper's one output layer
    for name, group in summary["groups"].items():
        shapes = [tuple(layer["shape"]) for layer in group["layers"]]
        names = [layer["name"] for layer in group["layers"]]
        joint = [[names.index("mu"), names.index("log_std")]] if agent == "sac" and name == "actor" else []
        expected = allocate_joint("erk", shapes, summary["group_sparsity"].get(name, summary["sparsity"]), joint)
        assert [layer["active"] for layer in group["layers"]] == expected, name
    for group, (online, target) in NETWORKS.get(agent, {}).items():
        online_layers = find_maskable_layers(getattr(model.policy, online))
        counts = [int(layer.weight_mask.sum()) for layer in online_layers.values()]
        assert counts == [layer["active"] for layer in summary["groups"][group]["layers"]]
        if target is not None:
            target_layers = find_maskable_layers(getattr(model.policy, target))
            for name, layer in online_layers.items():
                assert torch.equal(target_layers[name].weight_mask, layer.weight_mask)
                assert torch.all(target_layers[name].weight[~layer.weight_mask] == 0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("agent", ["sac", "dqn", "ppo"])
def test_every_agent_and_method_trains_and_saves_exact_sparse_models(agent, method, tmp_path):
    cfg = tiny_run(agent, method, tmp_path / "run")
    summary = train(plan_run(cfg))
    run_dir = tmp_path / "run"
    assert summary["status"] == "completed"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    for name in ("progress.csv", "evaluations.npz", "model.zip", ".hydra/config.yaml", "checkpoint/meta.json"):
        assert (run_dir / name).exists(), name
    assert summary["score"] is not None
    if method in ("set", "rigl", "prune"):
        assert summary["topology"]["num_updates"] > 0
    if method != "dense":
        assert summary["params"]["active"] == pytest.approx(0.1 * summary["params"]["total"], rel=0.01)
    check_saved_model(agent, method, run_dir, summary)


def test_group_sparsity_overrides(tmp_path):
    cfg = tiny_run("sac", "static", tmp_path / "run", "sparsity.actor=0.5", "sparsity.critic=0.95")
    groups = train(plan_run(cfg))["groups"]
    assert groups["actor"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert groups["critic"]["sparsity"] == pytest.approx(0.95, abs=1e-3)


def test_loaded_model_keeps_masks_and_keeps_training_sparse(tmp_path):
    cfg = tiny_run("sac", "rigl", tmp_path / "run")
    summary = train(plan_run(cfg))
    spec = AGENTS.get("sac")
    model = spec.algo.load(tmp_path / "run" / "model.zip", env=None)
    from envs import EnvSpec, make_vec_env

    model.set_env(make_vec_env(EnvSpec.from_config(cfg.env), 1, seed=1))
    saved = {k: v.clone() for k, v in model.policy.state_dict().items() if k.endswith("weight_mask")}
    controller = attach_controller(model, spec, core_sparsity_config(cfg.sparsity), 600, seed=1, existing=True)
    assert all(torch.equal(model.policy.state_dict()[k], v) for k, v in saved.items())
    model.learn(300)
    controller.check_invariants()
    assert controller.num_updates > 0
    after = {k: v for k, v in model.policy.state_dict().items() if k.endswith("weight_mask")}
    assert any(not torch.equal(after[k], v) for k, v in saved.items())  # RigL kept rewiring
    assert controller.stats()["active"] == summary["params"]["active"]


def test_real_command_in_a_subprocess(tmp_path):
    run_dir = tmp_path / "cli"
    command = [
        sys.executable, "-m", "sparse_rl.run", "agent=dqn", "env=CartPole", "sparsity=set", "sparsity.sparsity=0.8",
        "agent.total_timesteps=400", "agent.sb3.learning_starts=100", "agent.eval_freq=200", "agent.eval_episodes=2",
        "agent.net_arch=[32,32]", "sparsity.update_interval=10", f"run_dir={run_dir}", "seed=7",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert (summary["agent"], summary["env"], summary["method"], summary["seed"]) == ("dqn", "CartPole", "set", 7)
    assert summary["sparsity"] == 0.8
    assert summary["num_timesteps"] == 400
    assert summary["params"]["active"] == pytest.approx(0.2 * summary["params"]["total"], abs=1)
    assert summary["groups"]["q"]["inference_flops"] == 2 * summary["groups"]["q"]["active"]
    assert summary["env_steps_per_s"] > 0 and summary["versions"]["torch"].startswith("2.13")
    assert len(summary["groups"]["q"]["layers"]) == 3
    assert any(run_dir.glob("events.out.tfevents.*"))
