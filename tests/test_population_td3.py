"""TD3 members of the population engine (issue 21): SB3's update per member, the delayed actor's topology clock,
member independence, the SB3 path's start, sparse invariants, the launcher's run directory and exact resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure

from agents import AGENTS, attach_controller
from agents.decay import kernel_decay
from agents.population.export import copy_member, layer_pairs
from agents.population.streams import Draw, MemberStreams
from agents.population.td3 import PopulationTD3
from agents.td3 import SparseTD3Policy
from envs import load_env_spec, make_vec_env
from experiment.population_records import PopulationRun
from tests.conftest import core_config
from tests.test_population import (
    MEMBERS,
    _assert_member_invariants,
    _member_state,
    _plans,
    _progress_rows,
    _sweep,
    _trainer,
)
from tests.test_population_parity import HIDDEN, LR, OPTIMIZER_KWARGS, WD, B, _assert_member_equals, _batch, _stack

DELAY, TARGET_NOISE, NOISE_CLIP = 2, 0.2, 0.5


def _sb3_td3(seed: int, method: str) -> TD3:
    env = make_vec_env(load_env_spec("Pendulum"), 1, seed)
    policy_kwargs = {"net_arch": HIDDEN, "optimizer_kwargs": OPTIMIZER_KWARGS, "kernel_decay": kernel_decay("td3", WD, None)}
    model = TD3(
        SparseTD3Policy, env, learning_rate=LR, batch_size=B, buffer_size=100, learning_starts=0, seed=seed, device="cpu",
        policy_delay=DELAY, target_policy_noise=TARGET_NOISE, target_noise_clip=NOISE_CLIP, policy_kwargs=policy_kwargs,
    )  # fmt: skip
    attach_controller(model, AGENTS.get("td3"), core_config(method, 0.8), total_timesteps=1000, seed=seed)
    model.set_logger(configure(None, []))
    return model


def test_td3_population_update_equals_sb3_update_per_member():
    """Two gradient steps: a critic-only step (SB3's ``_n_updates`` 1), then critic + actor + both Polyak updates
    (``_n_updates`` 2); every member's weights, targets and masks equal SB3's after each, and so do the losses SB3
    logs. The target-policy noise is SB3's own draw (``normal_(0, σ)`` = σ·z for the same generator state)."""
    methods = ["rigl", "static", "dense"]
    models = [_sb3_td3(seed, method) for seed, method in enumerate(methods)]
    k = len(models)
    pop = PopulationTD3(
        k, 3, 1, HIDDEN, "ReLU", gamma=0.99, tau=0.005, learning_rate=LR, policy_delay=DELAY,
        target_policy_noise=TARGET_NOISE, target_noise_clip=NOISE_CLIP, exploration_noise=0.1,
        optimizer_kwargs=OPTIMIZER_KWARGS, actor_decay=[kernel_decay("td3", WD, None)["actor"]] * k,
        critic_decay=[kernel_decay("td3", WD, None)["critic"]] * k, device=torch.device("cpu"),
    )  # fmt: skip
    for member, model in enumerate(models):
        copy_member(pop, member, model, to_sb3=False)
        _assert_member_equals(pop, member, model, atol=0)
    generator = torch.Generator().manual_seed(5)
    for n_updates in (1, 2):
        batches = [_batch(3, 1, None, generator) for _ in models]
        noises, actor_before = [], [layer.weight.detach().clone() for layer in pop.actor.layers]
        for member, (model, batch) in enumerate(zip(models, batches)):
            model.replay_buffer.sample = lambda *args, batch=batch, **kwargs: batch
            torch.manual_seed(100 * n_updates + member)
            noises.append(torch.empty(B, 1).normal_())
            torch.manual_seed(100 * n_updates + member)  # SB3 draws the target-policy noise from the same state
            model.train(gradient_steps=1, batch_size=B)
            assert model._n_updates == n_updates
        fields = ("observations", "actions", "rewards", "next_observations", "dones")
        metrics = pop.update(*(_stack(batches, f) for f in fields), torch.stack(noises), clock_step=n_updates % DELAY == 0)
        for member, model in enumerate(models):
            _assert_member_equals(pop, member, model)  # online and target networks, masks
            logged = model.logger.name_to_value
            torch.testing.assert_close(
                float(metrics["critic_loss"][member]), logged["train/critic_loss"], rtol=1e-5, atol=1e-6
            )
            if n_updates == DELAY:
                torch.testing.assert_close(
                    float(metrics["actor_loss"][member]), logged["train/actor_loss"], rtol=1e-5, atol=1e-6
                )
            model.logger.dump(0)
        if n_updates == 1:  # the critic-only step leaves the actor alone
            assert all(torch.equal(layer.weight, before) for layer, before in zip(pop.actor.layers, actor_before))
            assert torch.isnan(metrics["actor_loss"]).all()
        else:
            assert not any(torch.equal(layer.weight, before) for layer, before in zip(pop.actor.layers, actor_before))
    for member in range(k):  # masked weights stay exactly zero in the actor, its target and the critics
        for layers in (pop.actor.layers, pop.actor_target.layers):
            assert layers[1].weight[member][~layers[1].weight_mask[member]].abs().sum() == 0


def test_td3_actor_step_takes_no_critic_gradient():
    """The actor's step differentiates Q₁ w.r.t. the action only (SB3 also fills the critic's gradients there and
    its next critic step discards them): after a step with the actor's, the critics' gradients are the critic
    step's, exactly as after a critic-only step from the same state."""
    k, generator = 2, torch.Generator().manual_seed(3)
    pop = PopulationTD3(
        k, 3, 1, HIDDEN, "ReLU", gamma=0.99, tau=0.005, learning_rate=LR, policy_delay=DELAY,
        target_policy_noise=TARGET_NOISE, target_noise_clip=NOISE_CLIP, exploration_noise=0.1,
        optimizer_kwargs=OPTIMIZER_KWARGS, actor_decay=[0.0] * k, critic_decay=[0.0] * k, device=torch.device("cpu"),
    )  # fmt: skip
    for layer in [*pop.sparse_layers(), *pop.target_layers()]:
        torch.nn.init.normal_(layer.weight, std=0.3, generator=generator)
    batches = [_batch(3, 1, None, generator) for _ in range(k)]
    fields = ("observations", "actions", "rewards", "next_observations", "dones")
    inputs = [*(_stack(batches, f) for f in fields), torch.randn(k, B, 1, generator=generator)]
    critic_only, with_actor = copy.deepcopy(pop), copy.deepcopy(pop)
    critic_only.update(*inputs, clock_step=False)
    with_actor.update(*inputs, clock_step=True)
    for a, b in zip(critic_only.critic.layers, with_actor.critic.layers):
        assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(a.bias.grad, b.bias.grad)
    assert all(layer.weight.grad.abs().sum() > 0 for layer in with_actor.actor.layers)


def test_topology_clock_advances_at_actor_steps_only(tmp_path, monkeypatch):
    """Design decisions 31 and 40: the controllers step at gradient steps that are multiples of ``policy_delay``
    (an odd update point is applied at the next actor step, as ``TopologyController.tick`` does on the SB3 path),
    and RigL's dense gradients are snapshot only in an update that steps the actor."""
    trainer = _trainer("td3", tmp_path, [(0, "rigl"), (1, "set")], "sparsity.update_interval=25")
    agent, loop = trainer.agent, trainer.loop
    snapshots, applied = [], []
    update = agent.update

    def spy_update(*args, **kwargs):
        if kwargs["snapshot_dense"]:
            snapshots.append(kwargs["clock_step"])
        return update(*args, **kwargs)

    monkeypatch.setattr(agent, "update", spy_update)
    for member in loop.members:

        def spy_step(t, controller=member.controller, step=member.controller.step):
            before = controller.num_updates
            changed = step(t)
            if controller.num_updates != before:
                applied.append((t, loop.clock, controller.last_update_step))
            return changed

        monkeypatch.setattr(member.controller, "step", spy_step)
    trainer.learn()
    assert snapshots and all(snapshots)
    assert len(applied) == sum(m.controller.num_updates for m in loop.members) > 2
    assert all(t == clock and t % DELAY == 0 and t - DELAY < point <= t for t, clock, point in applied), applied
    assert any(point % DELAY for _, _, point in applied)  # some update points fell between two actor steps


@pytest.mark.parametrize("method", ["dense", "rigl"])
def test_a_td3_member_trains_bit_identically_alone_and_in_a_population(method, tmp_path):
    """Weights, masks, targets, Adam moments, evaluations and logs of a member alone and beside two others."""
    seed = 3
    alone = _trainer("td3", tmp_path / "alone", [(seed, method)])
    alone.learn()
    population = _trainer("td3", tmp_path / "three", [(5, "set"), (seed, method), (0, "dense")])
    population.learn()
    if method == "rigl":
        assert alone.members[0].controller.num_updates > 0
    reference, found = _member_state(alone, seed), _member_state(population, seed)
    assert found.keys() == reference.keys() and any(key.startswith("actor/") and key.endswith("/target") for key in found)
    for key, tensor in reference.items():
        assert torch.equal(found[key], tensor), key
    assert np.array_equal(np.array(population.members[1].eval_results), np.array(alone.members[0].eval_results))
    name = f"{method}_{seed}"
    assert _progress_rows(tmp_path / "three" / name) == _progress_rows(tmp_path / "alone" / name)


@pytest.mark.parametrize("method", ["static", "rigl"])
def test_a_td3_member_starts_where_the_sb3_path_starts(method, tmp_path):
    """Initial weights, masks, targets as the SB3 path's run of the same config and seed; warm-up actions are SB3's
    ``action_space.sample()`` (the model's seeded space) plus the member's exploration noise, clipped."""
    from experiment.sb3 import build_plan_model

    plans = _plans("td3", tmp_path, [(1, method), (4, "rigl")])
    plan, warmup = plans[0], 60
    run = PopulationRun(plans, [32, 32], tmp_path / "population", "cpu", False)
    env = make_vec_env(plan.env, 1, int(plan.cfg.seed))
    model, _ = build_plan_model(plan, env, device="cpu")
    attach_controller(model, plan.agent, plan.sparsity, int(plan.cfg.agent.total_timesteps), int(plan.cfg.seed))
    pairs = list(layer_pairs(run.agent, 0, model))
    assert len(pairs) == 2 * 3 + 2 * 2 * 3  # actor, its target, two critics and their targets
    for batched, row, linears in pairs:
        assert torch.equal(batched.weight[row], torch.cat([lin.weight.detach() for lin in linears]))
        assert torch.equal(batched.bias[row], torch.cat([lin.bias.detach() for lin in linears]))
        assert torch.equal(batched.weight_mask[row], torch.cat([lin.weight_mask for lin in linears]))
    space = copy.deepcopy(model.action_space)  # SB3 seeded it; nothing has drawn from it yet
    sigma = float(plan.cfg.agent.exploration_noise)
    streams = MemberStreams([int(plan.cfg.seed)], torch.device("cpu"))
    expected = []
    for t in range(warmup):
        low, high = space.low, space.high
        scaled = 2.0 * ((space.sample() - low) / (high - low)) - 1.0
        noise = streams.normal(Draw.ACT_NOISE, t, 1)[0].numpy() * np.float32(sigma)
        expected.append(np.clip(scaled + noise, -1.0, 1.0))
    run.total = warmup
    run.learn()
    np.testing.assert_array_equal(run.loop.replay.storage["actions"][0, :warmup].numpy(), np.array(expected, np.float32))
    run.close()
    env.close()


def test_td3_population_keeps_every_members_sparse_invariants(tmp_path):
    trainer = _trainer("td3", tmp_path)
    before = {
        m.plan.sparsity.method: [layer.mask.clone() for g in m.controller.groups for layer in g.layers]
        for m in trainer.members
    }
    trainer.learn()
    _assert_member_invariants(trainer)  # counts, zeros, Adam state, target masks (actor and critic targets)
    for member in trainer.members:
        method = member.plan.sparsity.method
        assert [len(g.target_layers) for g in member.controller.groups] == [3, 6]
        changed = any(
            not torch.equal(a, layer.mask)
            for a, layer in zip(before[method], (x for g in member.controller.groups for x in g.layers))
        )
        assert changed == (method in ("set", "rigl", "prune")), method
    summaries = trainer.finish()
    assert [s["status"] for s in summaries] == ["completed"] * len(MEMBERS)


def test_td3_topology_update_zeroes_adam_state_and_targets_at_regrown_positions(tmp_path):
    trainer = _trainer("td3", tmp_path, [(0, "rigl"), (1, "rigl")])
    trainer.learn()  # creates Adam state
    agent = trainer.agent
    state = agent.actor_optimizer.state[agent.actor.layers[1].weight]
    for value in (state["exp_avg"], state["exp_avg_sq"]):
        value.fill_(1.0)
    controller = trainer.members[0].controller
    actor = controller.groups[0]
    for layer in actor.layers:
        layer.dense_grad.copy_(torch.rand_like(layer.dense_grad))
    with torch.no_grad():
        agent.actor_target.layers[1].weight.add_(agent.actor_target.layers[1].weight_mask.float())  # nonzero inside
    old = actor.layers[1].mask.clone()
    controller._update(controller.updater.window.start + controller.updater.window.interval)
    new = actor.layers[1].mask
    grown, dropped = new & ~old, old & ~new
    assert grown.any() and dropped.any()
    assert torch.all(state["exp_avg"][1] == 1.0), "member 1's optimizer state was touched by member 0's update"
    for value in (state["exp_avg"][0], state["exp_avg_sq"][0]):
        assert torch.all(value[grown] == 0.0) and torch.all(value[new & old] == 1.0)
    assert torch.all(agent.actor.layers[1].weight[0][grown] == 0)  # RigL grows at zero
    target = agent.actor_target.layers[1]
    assert torch.equal(target.weight_mask[0], new)
    assert torch.all(target.weight[0][~new] == 0) and torch.all(target.weight[0][grown] == 0)


@pytest.mark.parametrize("stop", [251, 60])  # 251: a checkpoint between a critic-only and an actor step; 60: warm-up
def test_td3_population_resumes_exactly_from_its_checkpoint(stop, tmp_path):
    members = [(0, "rigl"), (1, "dense")]
    straight = _trainer("td3", tmp_path / "straight", members)
    straight.learn()
    first = _trainer("td3", tmp_path / "resumed", members)
    first.total = stop
    first.learn(checkpoint_freq=stop)
    first.save_checkpoint()
    first.close()
    resumed = _trainer("td3", tmp_path / "resumed", members, "resume=true")
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


def test_a_diverging_td3_member_fails_alone(tmp_path):
    trainer = _trainer("td3", tmp_path, [(0, "dense"), (1, "rigl"), (2, "set")], "nan_check_freq=50")
    with torch.no_grad():
        trainer.agent.critic.layers[0].weight[2 * 1].fill_(float("nan"))  # member 1's first twin critic
    trainer.learn(nan_check_freq=50)
    summaries = trainer.finish()
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert "non-finite" in summaries[1]["error"] and "critic" in summaries[1]["error"]
    assert all(np.isfinite(s["score"]) for s in (summaries[0], summaries[2]))


def test_launcher_trains_td3_and_writes_an_sb3_loadable_model(tmp_path):
    result = _sweep(tmp_path, "agent=td3", "env=Pendulum", "sparsity=rigl", "seed=0,1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 runs in 1 population(s)" in result.stdout
    run_dirs = sorted(p.parent for p in tmp_path.glob("td3/Pendulum/*/seed_*/summary.json"))  # the SB3 path's layout
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["engine"] == "population" and summary["num_timesteps"] == 300
        model = TD3.load(run_dir / "model.zip", device="cpu")
        modules = dict(model.policy.named_modules())
        for online in ("actor.mu.0", "actor.mu.2", "critic.qf0.0", "critic.qf1.2"):
            layer, target = (
                modules[online],
                modules[online.replace("actor.", "actor_target.").replace("critic.", "critic_target.")],
            )
            assert torch.equal(layer.weight_mask, target.weight_mask)
            assert torch.count_nonzero(layer.weight[~layer.weight_mask]) == 0
            assert torch.count_nonzero(target.weight[~layer.weight_mask]) == 0
        assert 0 < float(modules["actor.mu.2"].weight_mask.float().mean()) < 0.5  # sparse, as configured
        action, _ = model.predict(np.zeros(3, np.float32), deterministic=True)
        assert action.shape == (1,) and np.all(np.abs(action) <= 2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_td3_cuda_graphs_capture_both_phases_and_equal_the_eager_step(tmp_path):
    """With policy_delay 2 the critic-only and the actor steps are two captured graphs (the clock's phase is part of
    the key); graphed and eager runs compute the same members."""
    from experiment.population import use_tf32

    use_tf32(False)
    runs = {}
    for graph in (False, True):
        plans = _plans("td3", tmp_path / str(graph), [(0, "rigl"), (1, "dense")])
        runs[graph] = PopulationRun(plans, [32, 32], tmp_path / f"population_{graph}", "cuda", graph)
        runs[graph].learn()
    assert {key[2] for key in runs[True].loop._graphs} == {0, 1}
    for seed in (0, 1):
        eager, graphed = _member_state(runs[False], seed), _member_state(runs[True], seed)
        for key, tensor in eager.items():
            torch.testing.assert_close(graphed[key], tensor, atol=1e-5, rtol=1e-4, msg=f"{seed} {key}")
