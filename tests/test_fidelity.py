"""Faithful to the paper (issue 10): joint SAC heads under ERK, saved models stay sparse, weight decay per group,
the paper's initialisation, DQN's loss and clipping, the schedule reaching its end, resume not moving it."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from stable_baselines3 import DQN, PPO, SAC, TD3
from torch import nn

from agents import AGENTS, attach_controller, build_model
from agents.decay import kernel_decay
from agents.dqn import LossDQN
from agents.initialization import TRUNCATED_NORMAL_STD, init_linear_
from envs import EnvSpec, make_vec_env
from experiment.plan import UsageError, plan_run
from experiment.sb3 import train
from experiment.schema import core_sparsity_config
from sparse_rl.distributions import allocate, allocate_joint
from tests.agent_helpers import compose_run, tiny_run


def layer_sparsities(counts, shapes):
    return [round(1 - c / math.prod(s), 3) for c, s in zip(counts, shapes)]


def env_of(cfg):
    return make_vec_env(EnvSpec.from_config(cfg.env), 1, seed=1)


def agent_cfg(cfg) -> dict:
    return OmegaConf.to_container(cfg.agent, resolve=True)


def model_for(overrides: list[str], sparse: bool = True):
    cfg = compose_run(overrides)
    spec = AGENTS.get(cfg.agent.name)
    model = build_model(
        spec, agent_cfg(cfg), env_of(cfg), net_arch=list(cfg.agent.net_arch), sparse=sparse, seed=0, device="cpu"
    )
    return cfg, spec, model


# ------------------------------------------------------------------------------------ 1. SAC heads as one layer
def test_sac_walker2d_actor_heads_get_the_papers_erk_layer():
    # ERK (google-research/rigl rigl/sparse_utils.py) of the paper's Walker2d actor 17x256, 256x256, 256x12 at 90%:
    # 0.565 / 0.946 / 0.396; SB3 has two 256x6 heads
    shapes = [(256, 17), (256, 256), (6, 256), (6, 256)]
    counts = allocate_joint("erk", shapes, 0.9, joint=[[2, 3]])
    assert layer_sparsities(counts, shapes) == pytest.approx([0.565, 0.946, 0.396, 0.396], abs=0.0015)
    assert sum(counts) == round(0.1 * sum(math.prod(s) for s in shapes))
    assert [*counts[:2], counts[2] + counts[3]] == allocate("erk", [(256, 17), (256, 256), (12, 256)], 0.9)


def test_sb3_sac_actor_on_walker2d_is_allocated_like_the_paper():
    cfg, spec, model = model_for(["agent=sac", "env=Walker2d", "sparsity=rigl", "sparsity.sparsity=0.9"])
    controller = attach_controller(model, spec, core_sparsity_config(cfg.sparsity), 10_000, seed=0)
    actor = controller.stats()["groups"]["actor"]["layers"]
    assert [layer["name"] for layer in actor] == ["latent_pi.0", "latent_pi.2", "mu", "log_std"]
    assert [round(layer["sparsity"], 3) for layer in actor] == pytest.approx([0.565, 0.946, 0.396, 0.396], abs=0.0015)


def test_joint_layers_are_declared_by_name_and_checked():
    from sparse_rl import SparseGroup

    net = nn.ModuleDict({"body": nn.Linear(4, 8), "a": nn.Linear(8, 2), "b": nn.Linear(8, 3)})
    group = SparseGroup("actor", net, joint=[("a", "b")])
    assert group.joint_indices == [[1, 2]]
    with pytest.raises(ValueError, match="not among its layers"):
        SparseGroup("actor", net, joint=[("a", "c")])
    with pytest.raises(ValueError, match="share all but their first dimension"):
        allocate_joint("erk", [(8, 4), (2, 8)], 0.5, joint=[[0, 1]])


def test_sparse_init_of_joint_heads_counts_fan_out_over_both():
    from sparse_rl.masks import MaskedLayer, attach_mask
    from sparse_rl.sparse_init import unit_scaled_init_stacked_

    a, b = nn.Linear(5, 1, bias=False), nn.Linear(5, 1, bias=False)
    for layer in (a, b):
        attach_mask(layer)
    unit_scaled_init_stacked_([MaskedLayer("a", a), MaskedLayer("b", b)], torch.Generator().manual_seed(0))
    # fan_in 5, fan_out 2 (two heads): L = sqrt(3 / 3.5), vs sqrt(3 / 3) for a head alone
    limit = math.sqrt(3 / 3.5)
    weights = torch.cat([a.weight, b.weight])
    assert weights.abs().max() <= limit
    assert weights.abs().max() > 0.8 * limit


# ------------------------------------------------------------------------------------ 2. saved models stay sparse
def inactive_nonzeros(policy) -> int:
    state = policy.state_dict()
    return sum(
        int((state[k.replace("weight_mask", "weight")][~m] != 0).sum()) for k, m in state.items() if k.endswith("weight_mask")
    )


@pytest.mark.parametrize("agent, algo", [("sac", SAC), ("dqn", DQN), ("ppo", PPO), ("td3", TD3)])
def test_plain_sb3_load_and_learn_keeps_a_sparse_model_sparse(agent, algo, tmp_path):
    cfg = tiny_run(agent, "rigl", tmp_path / "run")
    train(plan_run(cfg))
    model = algo.load(tmp_path / "run" / "model.zip", env=env_of(cfg))  # plain SB3, no controller
    masks = {k: v.clone() for k, v in model.policy.state_dict().items() if k.endswith("weight_mask")}
    model.learn(200)
    assert inactive_nonzeros(model.policy) == 0
    after = model.policy.state_dict()
    assert all(torch.equal(after[k], v) for k, v in masks.items())  # no controller: the topology stays fixed


@pytest.mark.parametrize("method", ["static", "set"])
def test_documented_path_continues_the_method_and_stays_sparse(method, tmp_path):
    cfg = tiny_run("dqn", method, tmp_path / "run")
    summary = train(plan_run(cfg))
    spec = AGENTS.get("dqn")
    model = spec.algo.load(tmp_path / "run" / "model.zip", env=env_of(cfg))
    assert model.loss == "mse"  # LossDQN.load keeps the paper's loss
    model.learn(150)  # plain training first: under the guard, Adam state accumulates outside the masks
    controller = attach_controller(model, spec, core_sparsity_config(cfg.sparsity), 600, seed=1, existing=True)
    assert not model.policy.mask_guarded
    model.learn(300)  # static: no topology update re-zeroes anything, the controller alone keeps the masks
    controller.check_invariants()
    assert inactive_nonzeros(model.policy) == 0
    assert controller.stats()["active"] == summary["params"]["active"]
    if method == "set":
        assert controller.num_updates > 0


# ------------------------------------------------------------------------------------ 3. weight decay
def test_kernel_decay_derivation():
    assert kernel_decay("sac", 1e-4, None) == {"actor": 2e-4, "critic": 1e-4}
    assert kernel_decay("dqn", 1e-6, "huber") == {"q": 1e-6}
    assert kernel_decay("dqn", 1e-6, "mse") == {"q": 2e-6}
    assert kernel_decay("ppo", 1e-6, None) == {"actor": 2e-6, "critic": 2e-6}
    assert kernel_decay("td3", 1e-4, None) == {"actor": 2e-4, "critic": 2e-4}  # SB3's TD3 critic loss: sum(mse)
    with pytest.raises(ValueError, match="valid choices: mse, huber"):
        kernel_decay("dqn", 1e-6, None)


def decay_by_param(optimizer) -> dict[int, float]:
    return {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}


def test_sac_optimizers_decay_kernels_per_group_and_nothing_else():
    cfg, _, model = model_for(["agent=sac", "env=Pendulum", "sparsity=set"])  # Graesser et al. 2022 App. Table 2: SET wd 1e-4
    assert cfg.agent.weight_decay == 1e-4
    actor, critic = decay_by_param(model.actor.optimizer), decay_by_param(model.critic.optimizer)
    for name, param in model.actor.named_parameters():
        assert actor[id(param)] == (2e-4 if name.endswith("weight") else 0.0), name
    for name, param in model.critic.named_parameters():
        assert critic[id(param)] == (1e-4 if name.endswith("weight") else 0.0), name
    assert all(group["weight_decay"] == 0 for group in model.ent_coef_optimizer.param_groups)


def test_ppo_log_std_and_biases_are_not_decayed():
    _, _, model = model_for(["agent=ppo", "env=Pendulum", "sparsity=rigl"])  # Graesser et al. 2022 App. Table 3: RigL wd 1e-4
    decay = decay_by_param(model.policy.optimizer)
    for name, param in model.policy.named_parameters():
        assert decay[id(param)] == (2e-4 if name.endswith("weight") else 0.0), name


@pytest.mark.parametrize("loss, expected", [("mse", 2e-6), ("huber", 1e-6)])
def test_dqn_decay_follows_its_loss(loss, expected):
    _, _, model = model_for(["agent=dqn", "env=CartPole", "sparsity=dense", f"agent.loss={loss}"], sparse=False)
    decay = decay_by_param(model.policy.optimizer)
    for name, param in model.q_net.named_parameters():
        assert decay[id(param)] == (expected if name.endswith("weight") else 0.0), name


def test_optimizer_kwargs_weight_decay_is_refused(tmp_path):
    cfg = tiny_run("sac", "dense", tmp_path / "run", "+agent.sb3.policy_kwargs.optimizer_kwargs.weight_decay=0.1")
    with pytest.raises(UsageError, match=r"set agent\.weight_decay"):
        plan_run(cfg)


def test_resume_restores_the_decay_groups(tmp_path):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("sac", "set", run_dir, "checkpoint_freq=100")))
    model = SAC.load(run_dir / "checkpoint" / "model.zip")
    assert len(model.actor.optimizer.param_groups) == 2
    assert model.actor.optimizer.state  # the saved Adam state matched the groups


# ------------------------------------------------------------------------------------ 4. initialisation
def test_torch_default_scheme_is_nn_linear_reset_parameters():
    torch.manual_seed(3)
    reference = nn.Linear(17, 64)
    weight, bias = torch.empty(64, 17), torch.empty(64)
    torch.manual_seed(3)
    init_linear_(weight, bias, None, scheme="torch_default")
    assert torch.equal(weight, reference.weight.detach()) and torch.equal(bias, reference.bias.detach())


def test_schemes_draw_the_papers_distributions_per_member():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.empty(4, 512, 300), torch.empty(4, 512)  # 4 members of a population
    init_linear_(weight, bias, generator, scheme="he_truncated_normal")
    sigma = math.sqrt(2 / 300) / TRUNCATED_NORMAL_STD
    assert weight.abs().max() <= 2 * sigma and torch.all(bias == 0)
    assert weight.std().item() == pytest.approx(math.sqrt(2 / 300), rel=0.02)  # Keras: the truncated std is sqrt(2/fan_in)
    assert not torch.equal(weight[0], weight[1])
    init_linear_(weight, bias, generator, scheme="glorot_uniform")
    limit = math.sqrt(6 / (300 + 512))
    assert weight.abs().max() <= limit and weight.abs().max() > 0.99 * limit
    init_linear_(weight, bias, generator, scheme="uniform", limit=0.03, bias=-0.2)
    assert weight.abs().max() <= 0.03 and torch.all(bias == -0.2)
    with pytest.raises(KeyError, match="valid choices: glorot_uniform, he_truncated_normal, torch_default, uniform"):
        init_linear_(weight, bias, generator, scheme="orthogonal")


def test_dqn_classic_control_starts_with_the_papers_init():
    _, _, model = model_for(["agent=dqn", "env=Acrobot", "sparsity=dense"], sparse=False)
    hidden, output = model.q_net.q_net[0], model.q_net.q_net[-1]
    assert torch.all(output.bias == -0.2) and output.weight.abs().max() <= 0.03
    assert torch.all(hidden.bias == 0) and hidden.weight.abs().max() <= 2 * math.sqrt(2 / 6) / TRUNCATED_NORMAL_STD
    assert torch.equal(model.q_net_target.q_net[-1].bias, output.bias)  # the target starts equal
    _, _, sb3 = model_for(["agent=dqn", "env=Acrobot", "sparsity=dense", "agent.init.mode=sb3"], sparse=False)
    assert not torch.all(sb3.q_net.q_net[-1].bias == -0.2)


def test_sac_heads_are_one_glorot_layer_and_critics_glorot():
    _, _, model = model_for(["agent=sac", "env=Walker2d", "sparsity=static"])
    heads = torch.cat([model.actor.mu.weight, model.actor.log_std.weight])
    limit = math.sqrt(6 / (256 + 12))  # one 256x2A layer: fan_out 2A = 12
    assert heads.abs().max() <= limit and heads.abs().max() > 0.95 * limit
    assert torch.all(model.actor.mu.bias == 0) and torch.all(model.actor.log_std.bias == 0)
    q_out = model.critic.qf0[-1]
    assert q_out.weight.abs().max() <= math.sqrt(6 / 257) and torch.all(q_out.bias == 0)
    for p, q in zip(model.critic.parameters(), model.critic_target.parameters()):
        assert torch.equal(p, q)


def test_bad_init_config_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="valid choices: paper, sb3"):
        plan_run(tiny_run("sac", "dense", tmp_path / "a", "agent.init.mode=keras"))
    with pytest.raises(UsageError, match=r"agent\.init\.hidden: unknown init scheme 'xavier'"):
        plan_run(tiny_run("sac", "dense", tmp_path / "b", "agent.init.hidden.scheme=xavier"))


# ------------------------------------------------------------------------------------ 5, 7. DQN loss and clipping
def test_dqn_configs_use_the_papers_loss_and_no_clip():
    classic = compose_run(["agent=dqn", "env=CartPole"])
    assert classic.agent.loss == "mse" and math.isinf(classic.agent.sb3.max_grad_norm)
    atari = compose_run(["agent=dqn", "env=atari/Pong"])
    assert atari.agent.loss == "huber" and atari.agent.init.output.scheme == "glorot_uniform"


def filled_dqn(algo, seed: int, **kwargs):
    env = make_vec_env(EnvSpec.from_config(compose_run(["env=CartPole"]).env), 1, seed=0)
    model = algo("MlpPolicy", env, seed=seed, learning_starts=0, batch_size=32, policy_kwargs={"net_arch": [16]}, **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(64):  # the same transitions in both buffers; rewards large enough for a large gradient norm
        obs = rng.normal(size=(1, 4)).astype(np.float32)
        model.replay_buffer.add(obs, obs + 0.1, np.array([rng.integers(2)]), np.array([50.0]), np.array([False]), [{}])
    return model


def one_update(model, seed: int = 0):
    from stable_baselines3.common.logger import configure

    model.set_logger(configure(None, [""]))
    grads = {}

    def capture(optimizer, args, kwargs):
        grads.update({name: p.grad.clone() for name, p in model.q_net.named_parameters()})

    model.policy.optimizer.register_step_pre_hook(capture)
    np.random.seed(seed)
    model.train(gradient_steps=1, batch_size=32)
    return grads


def test_huber_lossdqn_update_equals_sb3_exactly():
    ours, theirs = filled_dqn(LossDQN, 1, loss="huber"), filled_dqn(DQN, 1)
    ours.policy.load_state_dict(theirs.policy.state_dict())
    g_ours, g_theirs = one_update(ours), one_update(theirs)
    for name in g_theirs:
        assert torch.equal(g_ours[name], g_theirs[name]), name
    for p, q in zip(ours.policy.parameters(), theirs.policy.parameters()):
        assert torch.equal(p, q)


def test_mse_lossdqn_gradient_is_the_papers_squared_td_error_unclipped():
    model = filled_dqn(LossDQN, 1, loss="mse", max_grad_norm=math.inf)
    q_net, target = copy.deepcopy(model.q_net), copy.deepcopy(model.q_net_target)
    np.random.seed(0)
    batch = model.replay_buffer.sample(32)
    with torch.no_grad():
        y = batch.rewards + (1 - batch.dones) * 0.99 * target(batch.next_observations).max(dim=1, keepdim=True).values
    q = q_net(batch.observations).gather(1, batch.actions.long())
    ((q - y) ** 2).mean().backward()  # the paper's element-wise squared TD error (TF-Agents), averaged
    grads = one_update(model, seed=0)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    assert norm > 10  # SB3's default clip (10) would have scaled it
    for name, param in q_net.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-6)


def test_lossdqn_rejects_an_unknown_loss(tmp_path):
    with pytest.raises(UsageError, match="valid choices: mse, huber"):
        plan_run(tiny_run("dqn", "dense", tmp_path / "run", "agent.loss=l1"))


# ------------------------------------------------------------------------------------ 6. schedule end and resume
def test_ppo_early_stopping_still_reaches_the_final_sparsity(tmp_path):
    cfg = tiny_run(
        "ppo",
        "prune",
        tmp_path / "run",
        "+agent.sb3.target_kl=1e-9",
        "sparsity.start_fraction=0.2",
        "sparsity.end_fraction=0.8",
    )
    summary = train(plan_run(cfg))
    assert summary["params"]["active"] == pytest.approx(0.1 * summary["params"]["total"], abs=1)
    assert summary["checks"]["final_allocation"] == "passed"
    assert summary["sparsity_reached"] == pytest.approx(0.9, abs=1e-3)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["sparsity_reached"] == summary["sparsity_reached"]


def test_a_run_that_misses_its_final_allocation_says_so(tmp_path, monkeypatch, capsys):
    import dataclasses

    spec = AGENTS.get("dqn")
    slow = dataclasses.replace(spec, gradient_steps=lambda model, total: 10 * spec.gradient_steps(model, total))
    monkeypatch.setattr("experiment.plan.AGENTS.get", lambda name: slow)
    summary = train(plan_run(tiny_run("dqn", "prune", tmp_path / "run")))
    assert summary["status"] == "completed"
    assert summary["checks"]["final_allocation"] == "failed"
    assert summary["sparsity_reached"] < 0.85
    assert "final sparsity allocation was not reached" in capsys.readouterr().err


def test_analysis_scores_no_run_that_missed_its_final_allocation(tmp_path):
    from analysis import load_run
    from tests.test_analysis import make_run

    run_dir = make_run(tmp_path, method="prune", sparsity=0.9)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(checks={"final_allocation": "failed"}, sparsity_reached=0.42)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run = load_run(run_dir)
    assert "did not reach its final sparsity allocation (sparsity reached 0.42)" in run.reasons()
    assert run.usable_for_curves and not run.usable_for_scores


@pytest.mark.parametrize(
    "override",
    ["agent.total_timesteps=600", "sparsity.update_interval=7", "sparsity.end_fraction=0.5", "sparsity.drop_fraction=0.1"],
)
def test_resume_refuses_a_schedule_change_naming_the_key(tmp_path, override):
    run_dir = tmp_path / "run"
    train(plan_run(tiny_run("dqn", "set", run_dir, "checkpoint_freq=100")))
    summary_path = run_dir / "summary.json"  # as if killed after its last checkpoint: completed runs are never resumed
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "status": "running"}))
    key, value = override.split("=")

    def resume_cfg(*extra: str):
        cfg = tiny_run("dqn", "set", run_dir, "resume=true", *extra)
        OmegaConf.update(cfg, key, yaml.safe_load(value))  # after tiny_run's own overrides (it sets update_interval)
        return cfg

    with pytest.raises(UsageError, match=rf"{key}=.*moves the sparsity schedule; pass resume_schedule_change=true"):
        plan_run(resume_cfg())
    assert plan_run(resume_cfg("resume_schedule_change=true")).checkpoint is not None
    assert plan_run(tiny_run("dqn", "set", run_dir, "resume=true")).checkpoint is not None


def test_ppo_clock_sync_is_exact_without_early_stopping(tmp_path):
    summary = train(plan_run(tiny_run("ppo", "set", tmp_path / "run")))
    # 256 env steps / 64 per rollout x 2 epochs x 2 minibatches of 32
    assert summary["topology"]["gradient_steps"] == 16
    assert summary["checks"]["final_allocation"] == "passed"


def test_saved_config_path_is_unchanged_by_the_new_keys(tmp_path):
    cfg = tiny_run("sac", "dense", tmp_path / "run")
    train(plan_run(cfg))
    saved = (Path(tmp_path) / "run" / ".hydra" / "config.yaml").read_text()
    assert "weight_decay: 0.0001" in saved and "mode: paper" in saved and "resume_schedule_change: false" in saved
