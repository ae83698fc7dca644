"""One population update equals SB3's update of each member (same weights, masks, batch and noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, SAC
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch.distributions.utils import _standard_normal

from agents import AGENTS, attach_controller
from agents.decay import kernel_decay
from agents.dqn import LossDQN
from agents.policies import SparseDQNPolicy, SparseSACPolicy
from agents.population.dqn import PopulationDQN
from agents.population.export import copy_member, layer_pairs
from agents.population.sac import PopulationSAC
from envs import load_env_spec, make_vec_env
from tests.conftest import core_config

B, HIDDEN, LR = 16, [32, 32], 3e-3
WD = 1e-2  # large, so a decay of the wrong parameters or with the wrong coefficient shows
OPTIMIZER_KWARGS = {"fused": True}


def _batch(obs_dim: int, act_dim: int, discrete: int | None, generator: torch.Generator) -> ReplayBufferSamples:
    actions = (
        torch.randint(0, discrete, (B, 1), generator=generator).float()
        if discrete
        else torch.rand(B, act_dim, generator=generator) * 2 - 1
    )
    return ReplayBufferSamples(
        observations=torch.randn(B, obs_dim, generator=generator),
        actions=actions,
        next_observations=torch.randn(B, obs_dim, generator=generator),
        dones=(torch.rand(B, 1, generator=generator) < 0.2).float(),
        rewards=torch.randn(B, 1, generator=generator),
        discounts=None,
    )


def _stack(batches: list[ReplayBufferSamples], field: str) -> torch.Tensor:
    return torch.stack([getattr(b, field) for b in batches])


def _assert_member_equals(pop, member: int, model, atol: float = 2e-6) -> None:
    for batched, row, linears in layer_pairs(pop, member, model):
        ours_w = batched.weight[row].detach()
        ours_b = batched.bias[row].detach()
        theirs_w = torch.cat([lin.weight.detach() for lin in linears])
        theirs_b = torch.cat([lin.bias.detach() for lin in linears])
        torch.testing.assert_close(ours_w, theirs_w, atol=atol, rtol=1e-5)
        torch.testing.assert_close(ours_b, theirs_b, atol=atol, rtol=1e-5)
        assert torch.equal(batched.weight_mask[row], torch.cat([lin.weight_mask for lin in linears]))


def _sb3_sac(seed: int, method: str, ent_coef: str = "auto"):
    env = make_vec_env(load_env_spec("Pendulum"), 1, seed)
    policy_kwargs = {"net_arch": HIDDEN, "optimizer_kwargs": OPTIMIZER_KWARGS, "kernel_decay": kernel_decay("sac", WD, None)}
    model = SAC(
        SparseSACPolicy, env, learning_rate=LR, batch_size=B, buffer_size=100, learning_starts=0, seed=seed, device="cpu",
        ent_coef=ent_coef, policy_kwargs=policy_kwargs,
    )  # fmt: skip
    attach_controller(model, AGENTS.get("sac"), core_config(method, 0.8), total_timesteps=1000, seed=seed)
    model.set_logger(configure(None, []))
    return model


@pytest.mark.parametrize("ent_coef", ["auto", "0.2"])
def test_sac_population_update_equals_sb3_update_per_member(ent_coef):
    methods = ["rigl", "static", "dense"]
    models = [_sb3_sac(seed, method, ent_coef) for seed, method in enumerate(methods)]
    k = len(models)
    pop = PopulationSAC(
        k, 3, 1, HIDDEN, "ReLU", gamma=0.99, tau=0.005, learning_rate=LR, ent_coef=ent_coef if ent_coef == "auto" else 0.2,
        target_entropy="auto", optimizer_kwargs=OPTIMIZER_KWARGS, actor_decay=[2 * WD] * k, critic_decay=[WD] * k,
        device=torch.device("cpu"),
    )  # fmt: skip
    for member, model in enumerate(models):
        copy_member(pop, member, model, to_sb3=False)
        _assert_member_equals(pop, member, model, atol=0)
    generator = torch.Generator().manual_seed(123)
    batches = [_batch(3, 1, None, generator) for _ in models]
    noises = []
    for member, (model, batch) in enumerate(zip(models, batches)):
        model.replay_buffer.sample = lambda *args, batch=batch, **kwargs: batch
        torch.manual_seed(1000 + member)
        noises.append((_standard_normal((B, 1), torch.float32, "cpu"), _standard_normal((B, 1), torch.float32, "cpu")))
        torch.manual_seed(1000 + member)  # SB3 draws the same two noise tensors, in the same order
        model.train(gradient_steps=1, batch_size=B)
    pop.update(
        _stack(batches, "observations"), _stack(batches, "actions"), _stack(batches, "rewards"),
        _stack(batches, "next_observations"), _stack(batches, "dones"),
        torch.stack([n[0] for n in noises]), torch.stack([n[1] for n in noises]),
    )  # fmt: skip
    for member, model in enumerate(models):
        _assert_member_equals(pop, member, model)
        if ent_coef == "auto":
            torch.testing.assert_close(pop.log_ent_coef[member].detach(), model.log_ent_coef.detach()[0])
        assert pop.critic.layers[0].weight[2 * member][~pop.critic.layers[0].weight_mask[2 * member]].abs().sum() == 0


def _sb3_dqn(seed: int, method: str, max_grad_norm: float, loss: str = "huber"):
    env = make_vec_env(load_env_spec("CartPole"), 1, seed)
    policy_kwargs = {"net_arch": HIDDEN, "optimizer_kwargs": OPTIMIZER_KWARGS, "kernel_decay": kernel_decay("dqn", WD, loss)}
    algo, extra = (DQN, {}) if loss == "huber" else (LossDQN, {"loss": loss})  # plain SB3 where SB3 has the loss
    model = algo(
        SparseDQNPolicy, env, learning_rate=LR, batch_size=B, buffer_size=100, learning_starts=0, seed=seed, device="cpu",
        max_grad_norm=max_grad_norm, policy_kwargs=policy_kwargs, **extra,
    )  # fmt: skip
    attach_controller(model, AGENTS.get("dqn"), core_config(method, 0.8), total_timesteps=1000, seed=seed)
    model.set_logger(configure(None, []))
    return model


@pytest.mark.parametrize(
    ("methods", "max_grad_norm", "loss"),
    [
        (["rigl", "set", "dense"], math.inf, "mse"),  # the paper's classic-control DQN (our LossDQN on the SB3 path)
        (["rigl", "dense"], math.inf, "huber"),  # plain SB3 DQN
        (["dense", "dense"], 0.05, "huber"),  # SB3 clips before masking: compare clipping on dense members only
    ],
)
def test_dqn_population_update_equals_sb3_update_per_member(methods, max_grad_norm, loss):
    models = [_sb3_dqn(seed, method, max_grad_norm, loss) for seed, method in enumerate(methods)]
    k = len(models)
    pop = PopulationDQN(
        k, 4, 2, HIDDEN, "ReLU", gamma=0.99, learning_rate=LR, loss=loss, max_grad_norm=max_grad_norm,
        optimizer_kwargs=OPTIMIZER_KWARGS, q_decay=[kernel_decay("dqn", WD, loss)["q"]] * k, device=torch.device("cpu"),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(7)
    batches = [_batch(4, 1, 2, generator) for _ in models]
    for member, (model, batch) in enumerate(zip(models, batches)):
        copy_member(pop, member, model, to_sb3=False)
        model.replay_buffer.sample = lambda *args, batch=batch, **kwargs: batch
        model.train(gradient_steps=1, batch_size=B)
    pop.update(*(_stack(batches, f) for f in ("observations", "actions", "rewards", "next_observations", "dones")))
    for member, model in enumerate(models):
        _assert_member_equals(pop, member, model)


def test_dqn_mse_loss_and_member_clipping_match_a_hand_computation():
    torch.manual_seed(0)
    k, obs_dim, n_actions = 2, 3, 2
    pop = PopulationDQN(
        k, obs_dim, n_actions, [4], "ReLU", gamma=0.9, learning_rate=0.1, loss="mse", max_grad_norm=0.01,
        optimizer_kwargs={}, q_decay=[0.0, 0.0], device=torch.device("cpu"),
    )  # fmt: skip
    for layer in pop.q_net.layers:
        torch.nn.init.normal_(layer.weight)
    pop.sync_target(1.0)
    obs, next_obs = torch.randn(k, 5, obs_dim), torch.randn(k, 5, obs_dim)
    actions, rewards = torch.randint(0, n_actions, (k, 5, 1)), torch.randn(k, 5, 1)
    dones = torch.zeros(k, 5, 1)
    expected_grads = []
    for member in range(k):  # by hand: per-member MSE, gradient, global-norm clip of that member alone
        params = [
            p.detach()[member].clone().requires_grad_(True) for layer in pop.q_net.layers for p in (layer.weight, layer.bias)
        ]
        h = torch.relu(obs[member] @ params[0].T + params[1])
        q = (h @ params[2].T + params[3]).gather(1, actions[member])
        with torch.no_grad():
            hn = torch.relu(next_obs[member] @ params[0].T + params[1])
            y = rewards[member] + 0.9 * (hn @ params[2].T + params[3]).max(dim=1, keepdim=True).values
        grads = torch.autograd.grad(((q - y) ** 2).mean(), params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        expected_grads.append([g * min(1.0, 0.01 / (norm.item() + 1e-6)) for g in grads])
    optimizer_step = pop.optimizer.step
    pop.optimizer.step = lambda *a, **kw: None  # inspect the gradients Adam would receive
    pop.update(obs, actions, rewards, next_obs, dones)
    pop.optimizer.step = optimizer_step
    got = [p.grad for layer in pop.q_net.layers for p in (layer.weight, layer.bias)]
    for member in range(k):
        for g, e in zip(got, expected_grads[member]):
            torch.testing.assert_close(g[member], e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("agent", ["sac", "dqn"])
@pytest.mark.parametrize("method", ["dense", "static", "set", "rigl", "prune"])
def test_a_member_starts_where_the_sb3_path_starts(agent, method, tmp_path):
    """Issue 20: a member's initial weights, masks (online and target) and warm-up actions are the SB3 path's run
    of the same config and seed (experiment.sb3: ``build_plan_model`` then ``attach_controller``; SB3's warm-up)."""
    from agents import attach_controller
    from experiment.population_records import PopulationRun
    from experiment.sb3 import build_plan_model
    from tests.test_population import _plans

    plans = _plans(agent, tmp_path, [(1, method), (4, "rigl")])  # the member beside another: its start is its own
    plan, warmup = plans[0], 60  # learning_starts is 100: every step below is a warm-up step on both paths
    run = PopulationRun(plans, [32, 32], tmp_path / "population", "cpu", False)
    env = make_vec_env(plan.env, 1, int(plan.cfg.seed))
    model, _ = build_plan_model(plan, env, device="cpu")
    attach_controller(model, plan.agent, plan.sparsity, int(plan.cfg.agent.total_timesteps), int(plan.cfg.seed))
    for batched, row, linears in layer_pairs(run.agent, 0, model):
        assert torch.equal(batched.weight[row], torch.cat([lin.weight.detach() for lin in linears]))
        assert torch.equal(batched.bias[row], torch.cat([lin.bias.detach() for lin in linears]))
        if method != "dense":
            assert torch.equal(batched.weight_mask[row], torch.cat([lin.weight_mask for lin in linears]))
    model.learn(total_timesteps=warmup)
    run.total = warmup
    run.learn()
    replay = run.loop.replay.storage
    sb3 = model.replay_buffer
    np.testing.assert_array_equal(replay["actions"][0, :warmup].numpy(), sb3.actions[:warmup, 0].astype(np.float32))
    np.testing.assert_array_equal(replay["observations"][0, :warmup].numpy(), sb3.observations[:warmup, 0])
    run.close()
    env.close()
