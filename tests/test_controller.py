"""Invariants of sparse training under long random runs with a real Adam optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_rl import UPDATERS, SparseGroup, SparsityInvariantError, TopologyController
from tests.conftest import core_config, make_toy_agent, mlp

SPARSE_METHODS = [name for name in UPDATERS.names() if UPDATERS.get(name).sparse]  # a new method is covered


def assert_invariants(agent, exact_counts: bool) -> None:
    """Direct checks, independent of ``controller.check_invariants``."""
    for group in agent.controller.groups:
        for i, layer in enumerate(group.layers):
            mask = layer.module.weight_mask
            assert torch.all(layer.module.weight.detach()[~mask] == 0)
            state_dict = layer.module.state_dict()
            assert torch.all(state_dict["weight"][~state_dict["weight_mask"]] == 0)
            if exact_counts:
                assert int(mask.sum()) == layer.allocated
            if group.target_layers:
                target = group.target_layers[i]
                assert torch.equal(target.weight_mask, mask)
                assert torch.all(target.weight.detach()[~mask] == 0)


@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_invariants_hold_over_thousands_of_steps(method):
    agent = make_toy_agent(method, sparsity=0.8, total_steps=2000, update_interval=10)
    changes = 0
    for t in range(1, 2001):
        before = [layer.mask.clone() for g in agent.controller.groups for layer in g.layers]
        agent.train_step(t)
        after = [layer.mask for g in agent.controller.groups for layer in g.layers]
        changes += any(not torch.equal(a, b) for a, b in zip(before, after))
        assert_invariants(agent, exact_counts=method != "prune" or t >= 1600)
    agent.controller.check_invariants()
    if method in ("set", "rigl", "prune"):
        assert changes > 50  # the topology really moved
    else:
        assert changes == 0


@pytest.mark.parametrize("method", ["set", "rigl"])
def test_optimizer_update_at_inactive_positions_is_exactly_zero(method):
    agent = make_toy_agent(method, total_steps=500)
    for t in range(1, 200):
        layers = [layer for g in agent.controller.groups for layer in g.layers]
        before = [layer.weight.detach().clone() for layer in layers]
        masks = [layer.mask.clone() for layer in layers]
        agent.train_step(t)
        for layer, w0, m0 in zip(layers, before, masks):
            if torch.equal(layer.mask, m0):  # no topology change in this step
                assert torch.all((layer.weight.detach() - w0)[~m0] == 0)


def test_rigl_uses_the_gradient_of_the_groups_own_optimizer_step():
    agent = make_toy_agent("rigl", update_interval=1)  # every step is an update point: the gradient is captured
    obs = torch.randn(16, 8)
    q = agent.critic(torch.cat([obs, agent.actor(obs)], dim=1))
    agent.critic_opt.zero_grad()
    q.pow(2).mean().backward()
    critic_grads = [layer.weight.grad.clone() for layer in agent.controller.groups[1].layers]
    agent.critic_opt.step()
    actor_loss = -agent.critic(torch.cat([obs, agent.actor(obs)], dim=1)).mean()
    agent.actor_opt.zero_grad()
    actor_loss.backward()  # overwrites nothing it should not: critic .grad now holds the actor loss's gradient
    agent.actor_opt.step()
    for layer, grad in zip(agent.controller.groups[1].layers, critic_grads):
        assert torch.equal(layer.dense_grad, grad)
        assert not torch.equal(layer.weight.grad, grad)


def test_cosine_drop_fraction_stops_changes_after_the_end_fraction():
    agent = make_toy_agent("set", total_steps=1000, update_interval=10, end_fraction=0.5)
    for t in range(1, 1001):
        agent.train_step(t)
        if t == 500:
            masks = [layer.mask.clone() for g in agent.controller.groups for layer in g.layers]
            updates_at_end = agent.controller.num_updates
    assert all(torch.equal(a, layer.mask) for a, layer in zip(masks, [la for g in agent.controller.groups for la in g.layers]))
    assert agent.controller.num_updates == updates_at_end == 50
    assert agent.controller.last_update["schedule_value"] == pytest.approx(0.0, abs=1e-12)


def test_dense_method_attaches_no_masks_and_reports_full_counts():
    agent = make_toy_agent("dense")
    for t in range(1, 50):
        agent.train_step(t)
    assert not any(hasattr(m, "weight_mask") for m in agent.actor.modules())
    stats = agent.controller.stats()
    assert stats["sparsity"] == 0.0
    assert stats["groups"]["actor"]["active"] == 8 * 32 + 32 * 32 + 32 * 2


def test_group_sparsity_overrides_apply_per_group():
    agent = make_toy_agent("static", sparsity=0.5, group_sparsity={"actor": 0.9})
    stats = agent.controller.stats()["groups"]
    assert stats["actor"]["active"] == round(0.1 * stats["actor"]["total"])
    assert stats["critic"]["active"] == round(0.5 * stats["critic"]["total"])


def test_sparse_init_bounds_active_weights_by_sparse_fan_avg():
    agent = make_toy_agent("static", sparsity=0.9)
    for layer in agent.controller.groups[0].layers:
        mask = layer.mask.float()
        fan_in, fan_out = mask.sum(1), mask.sum(0)
        limit = torch.sqrt(3.0 / torch.clamp((fan_in[:, None] + fan_out[None, :]) / 2, min=1.0))
        w = layer.weight.detach()
        assert torch.all(w.abs() <= limit + 1e-6)
        assert torch.count_nonzero(w[layer.mask]) == int(mask.sum())


def test_targets_start_equal_to_online_masked_weights():
    agent = make_toy_agent("rigl")
    for layer, target in zip(agent.controller.groups[1].layers, agent.controller.groups[1].target_layers):
        assert torch.equal(layer.weight, target.weight)


def test_state_dict_round_trip_resumes_bit_identically():
    reference = make_toy_agent("rigl", total_steps=600, seed=3)
    resumed = make_toy_agent("rigl", total_steps=600, seed=99)  # different masks and generator before loading
    for t in range(1, 301):
        torch.manual_seed(t)
        reference.train_step(t)
    # deep copies, as a checkpoint round trip gives (load_state_dict would otherwise share Adam's tensors)
    for part in ("actor", "critic", "critic_target", "actor_opt", "critic_opt", "controller"):
        getattr(resumed, part).load_state_dict(copy.deepcopy(getattr(reference, part).state_dict()))
    assert torch.equal(resumed.controller.generator.get_state(), reference.controller.generator.get_state())
    for t in range(301, 601):
        for agent in (reference, resumed):
            torch.manual_seed(t)
            agent.train_step(t)
    for net in ("actor", "critic", "critic_target"):
        for (name, a), (_, b) in zip(getattr(reference, net).state_dict().items(), getattr(resumed, net).state_dict().items()):
            assert torch.equal(a, b), f"{net}.{name}"
    assert resumed.controller.num_updates == reference.controller.num_updates


def test_loading_a_mask_of_another_architecture_is_a_clear_error():
    agent = make_toy_agent("set")
    state = agent.controller.state_dict()
    state["masks"]["actor/0"] = torch.ones(3, 3, dtype=torch.bool)
    fresh = make_toy_agent("set")
    with pytest.raises(ValueError, match="another architecture"):
        fresh.controller.load_state_dict(state)


def test_check_invariants_catches_a_drift():
    agent = make_toy_agent("static")
    layer = agent.controller.groups[0].layers[0]
    with torch.no_grad():
        layer.weight[~layer.mask] = 1.0
    with pytest.raises(SparsityInvariantError, match="non-zero weight"):
        agent.controller.check_invariants()


def test_stats_match_a_hand_count_with_a_conv_layer():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    controller = TopologyController([SparseGroup("q", net)], core_config("dense", 0.0), total_steps=10, seed=0)
    controller.init_masks()
    assert "inference_flops" not in controller.stats()["groups"]["q"]  # conv output size unknown before a forward
    net(torch.zeros(1, 2, 6, 6))
    stats = controller.stats()["groups"]["q"]
    assert stats["total"] == 2 * 4 * 9 + 64 * 5
    assert stats["total_with_bias"] == stats["total"] + 4 + 5
    assert stats["inference_flops"] == 2 * (72 * 16 + 320)  # 2 FLOPs per MAC; conv has 4x4 output positions
    assert stats["training_flops_per_sample"] == 3 * stats["inference_flops"]


def test_rigl_training_flops_amortise_the_dense_gradient():
    net = mlp([4, 10, 2])
    controller = TopologyController([SparseGroup("q", net)], core_config("rigl", 0.5, update_interval=9), 100, 0)
    controller.init_masks()
    stats = controller.stats()["groups"]["q"]
    f_s, f_d = stats["inference_flops"], 2 * (40 + 20)
    assert f_s == 2 * 30
    assert stats["training_flops_per_sample"] == pytest.approx((3 * f_s * 9 + 2 * f_s + f_d) / 10)


@settings(max_examples=12, deadline=None)
@given(
    hidden=st.lists(st.integers(2, 48), min_size=1, max_size=3),
    sparsity=st.floats(0.05, 0.98),
    method=st.sampled_from(["set", "rigl"]),
    distribution=st.sampled_from(["uniform", "er", "erk"]),
)
def test_property_counts_conserved_for_random_shapes(hidden, sparsity, method, distribution):
    torch.manual_seed(0)
    net = mlp([5, *hidden, 3])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    config = core_config(method, sparsity, distribution=distribution, update_interval=3, drop_fraction_schedule="constant")
    controller = TopologyController([SparseGroup("net", net, opt)], config, total_steps=120, seed=0)
    controller.init_masks()
    allocated = [layer.allocated for layer in controller.groups[0].layers]
    for t in range(1, 121):
        loss = net(torch.randn(4, 5)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        controller.step(t)
        assert [layer.active for layer in controller.groups[0].layers] == allocated
        for layer in controller.groups[0].layers:
            assert torch.all(layer.weight.detach()[~layer.mask] == 0)


def test_bad_configs_are_rejected():
    net = mlp([4, 4])
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        TopologyController([SparseGroup("q", net)], core_config("set", 1.0), 10, 0)
    with pytest.raises(KeyError, match="valid choices"):
        TopologyController([SparseGroup("q", net)], core_config("lottery"), 10, 0)
    with pytest.raises(ValueError, match="no Linear/Conv2d"):
        SparseGroup("q", nn.ReLU())
    with pytest.raises(ValueError, match="unique"):
        TopologyController([SparseGroup("q", net), SparseGroup("q", net)], core_config("set"), 10, 0)


def test_existing_masks_are_adopted_and_checked():
    agent = make_toy_agent("set", sparsity=0.8)
    for t in range(1, 30):
        agent.train_step(t)
    masks = [layer.mask.clone() for g in agent.controller.groups for layer in g.layers]
    agent.controller.close()
    adopted = TopologyController(agent.controller.groups, core_config("set", 0.8), 1000, seed=5)
    adopted.init_masks(existing=True)
    assert all(torch.equal(m, layer.mask) for m, layer in zip(masks, [la for g in adopted.groups for la in g.layers]))
    wrong = TopologyController(agent.controller.groups, core_config("set", 0.5), 1000, seed=5)
    with pytest.raises(ValueError, match="another sparsity"):
        wrong.init_masks(existing=True)


def test_tick_advances_the_clock_and_updates_on_schedule():
    agent = make_toy_agent("rigl", total_steps=100, update_interval=10)
    agent.critic_opt.zero_grad()
    agent.critic(torch.randn(4, 10)).sum().backward()
    agent.critic_opt.step()
    agent.actor_opt.zero_grad()
    agent.actor(torch.randn(4, 8)).sum().backward()
    agent.actor_opt.step()
    changes = [agent.controller.tick() for _ in range(10)]
    assert agent.controller.clock == 10 and agent.controller.num_updates == 1
    assert changes[-1] and not any(changes[:-1])


def test_gradient_masking_follows_masks_loaded_behind_the_controllers_back():
    agent = make_toy_agent("static", sparsity=0.5)
    layer = agent.controller.groups[0].layers[0]
    agent.train_step(1)  # builds the cached float mask
    new_mask = torch.zeros_like(layer.mask)
    new_mask[0, :] = True
    state = agent.actor.state_dict()
    state["0.weight_mask"] = new_mask
    state["0.weight"] = state["0.weight"] * new_mask
    agent.actor.load_state_dict(state)  # e.g. SB3's set_parameters: copies into the existing buffer
    agent.actor_opt.zero_grad()
    agent.actor(torch.randn(4, 8)).sum().backward()
    agent.actor_opt.step()
    assert torch.all(layer.weight.grad[~new_mask] == 0)
    assert torch.any(layer.weight.grad[new_mask] != 0)


def test_rigl_copies_the_dense_gradient_only_before_an_update():
    agent = make_toy_agent("rigl", total_steps=1000, update_interval=10)
    layer = agent.controller.groups[0].layers[1]
    captured = []
    for t in range(1, 31):
        before = layer.dense_grad.clone()
        agent.train_step(t)
        captured.append(not torch.equal(before, layer.dense_grad))
    assert [t for t, c in enumerate(captured, start=1) if c] == [10, 20, 30]


def test_tick_steps_clock_applies_points_between_ticks_at_the_next_tick():
    """An optimizer stepped every ``tick_steps`` steps (TD3's delayed actor) drives a clock in the schedule's steps."""
    layer = nn.Linear(8, 8)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    config = core_config("rigl", 0.5, update_interval=5, end_fraction=1.0)
    controller = TopologyController([SparseGroup("g", layer, optimizer)], config, total_steps=30, seed=0, tick_steps=3)
    controller.init_masks()
    optimizer.register_step_post_hook(lambda *args: controller.tick())
    applied, snapshots = [], []
    for _ in range(10):  # ticks at 3, 6, ..., 30
        layer.weight.grad = torch.randn(8, 8)
        dense = layer.weight.grad.clone()
        before = controller.num_updates
        optimizer.step()
        if controller.num_updates > before:
            applied.append((controller.last_update_step, controller.clock))
            snapshots.append(torch.equal(controller.groups[0].layers[0].dense_grad, dense))
    assert applied == [(5, 6), (10, 12), (15, 15), (20, 21), (25, 27), (30, 30)]
    assert all(snapshots)  # RigL grew from the gradient of the very step that reached the point
    with pytest.raises(ValueError, match="tick_steps must be positive"):
        TopologyController([SparseGroup("g", nn.Linear(2, 2))], config, total_steps=30, seed=0, tick_steps=0)


@pytest.mark.parametrize(("method", "expected"), [("rigl", [5, 10, 15]), ("set", []), ("prune", [])])
def test_wants_dense_grad_names_the_steps_that_reach_an_update_point(method, expected):
    """``wants_dense_grad(t)``: ``t`` is the step the controller will be given after the optimizer step."""
    layer = nn.Linear(8, 8)
    config = core_config(method, 0.5, update_interval=5, start_fraction=0.0, end_fraction=1.0)
    controller = TopologyController([SparseGroup("g", layer, None)], config, total_steps=15, seed=0)
    controller.init_masks()
    wanted = []
    for t in range(1, 16):
        if controller.wants_dense_grad(t):
            wanted.append(t)
            assert controller.wants_dense_grad(t + 1)  # the point stays due until a step applies it
        if method == "rigl":
            for weight_layer in controller.groups[0].layers:
                weight_layer.dense_grad = torch.zeros(weight_layer.shape)
        controller.step(t)
        assert not controller.wants_dense_grad(t)  # applied: not wanted again for the same step
    assert wanted == expected
