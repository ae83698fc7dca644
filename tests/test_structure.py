"""N:M structured sparsity (sparse_rl/structure.py): exact N per group of M at init, after every update and prune step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from experiment.plan import UsageError, plan_run
from experiment.sb3 import train
from sparse_rl import SparseGroup, TopologyController
from sparse_rl.controller import SparsityInvariantError
from sparse_rl.masks import MaskedLayer
from sparse_rl.structure import NMStructure
from sparse_rl.updaters import RigLUpdater
from tests.agent_helpers import COMMON, TINY, compose_run
from tests.conftest import core_config, make_toy_agent

STRUCTURES = ["2:4", "1:4", "1:8"]
STEPS = 100  # toy training steps; update_interval 10 (conftest) → 8 updates in the 0-80% window


def _expected_counts(shape: tuple[int, ...], n: int, m: int) -> torch.Tensor:
    """Independent of NMStructure: per row, full groups hold n, a partial last group of r holds min(n, r)."""
    row = math.prod(shape[1:])
    sizes = [m] * (row // m) + ([row % m] if row % m else [])
    return torch.tensor([min(n, size) for size in sizes])


def _assert_nm(agent, n: int, m: int, per_group: int | None = None) -> None:
    """Every layer of every group: each group of m consecutive inputs holds exactly min(per_group or n, size)."""
    for group in agent.controller.groups:
        for layer in group.layers:
            rows = layer.mask.reshape(layer.shape[0], -1).to(torch.long)
            counts = torch.stack([chunk.sum(dim=1) for chunk in rows.split(m, dim=1)], dim=1)
            want = _expected_counts(layer.shape, per_group or n, m)
            assert torch.equal(counts, want.expand_as(counts)), (group.name, layer.name, counts[0].tolist())
            assert torch.count_nonzero(layer.weight.detach()[~layer.mask]) == 0


def test_toy_network_has_a_layer_whose_input_is_not_a_multiple_of_m() -> None:
    agent = make_toy_agent("static", 0.5, structure="2:4")
    assert (10, 32) in [(layer.shape[1], layer.shape[0]) for g in agent.controller.groups for layer in g.layers]


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", ["static", "set", "rigl"])
def test_exact_n_per_group_at_init_and_after_every_update(method: str, structure: str) -> None:
    nm = NMStructure.parse(structure)
    agent = make_toy_agent(method, nm.sparsity, total_steps=STEPS, structure=structure, drop_fraction=0.5)
    _assert_nm(agent, nm.n, nm.m)
    initial = [layer.mask.clone() for g in agent.controller.groups for layer in g.layers]
    for t in range(1, STEPS + 1):
        agent.train_step(t)
        agent.controller.check_invariants()
        _assert_nm(agent, nm.n, nm.m)
    final = [layer.mask for g in agent.controller.groups for layer in g.layers]
    changed = any(not torch.equal(a, b) for a, b in zip(initial, final))
    assert changed == (method != "static")
    for group in agent.controller.groups:
        for layer in group.layers:
            assert layer.active == layer.allocated == int(_expected_counts(layer.shape, nm.n, nm.m).sum()) * layer.shape[0]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_pruning_keeps_the_same_count_in_every_group_and_ends_at_n(structure: str) -> None:
    nm = NMStructure.parse(structure)
    agent = make_toy_agent("prune", nm.sparsity, total_steps=STEPS, structure=structure, start_fraction=0.2)
    _assert_nm(agent, nm.m, nm.m)  # dense at the start
    per_group_seen = []
    for t in range(1, STEPS + 1):
        agent.train_step(t)
        agent.controller.check_invariants()
        actor_in = agent.controller.groups[0].layers[0]  # 8 inputs: whole groups for every M tested
        per_group = int(actor_in.mask[:, : nm.m].sum(dim=1)[0])
        per_group_seen.append(per_group)
        _assert_nm(agent, nm.n, nm.m, per_group)
        expected = agent.controller.updater.group_keep(t) if agent.controller.last_update_step == t else per_group
        assert per_group == expected
    assert per_group_seen == sorted(per_group_seen, reverse=True)  # never regrows
    assert per_group_seen[-1] == nm.n and per_group_seen[0] > nm.n  # pruned gradually, not at once
    _assert_nm(agent, nm.n, nm.m)
    assert agent.controller.final_allocation_problem() is None


def test_group_keep_follows_the_cubic_schedule_from_m_to_n() -> None:
    updater = make_toy_agent("prune", 0.75, total_steps=STEPS, structure="1:4", start_fraction=0.2).controller.updater
    window = updater.window
    keeps = [updater.group_keep(t) for t in range(window.start, window.end + 1)]
    assert keeps[0] == 4 and keeps[-1] == 1 and keeps == sorted(keeps, reverse=True)
    mid = (window.start + window.end) // 2  # density 1 - 0.75 * (1 - 0.5^3) = 0.34375 → round(1.375) = 1
    assert updater.group_keep(mid) == round((1 - 0.75 * (1 - (1 - updater.window.progress(mid)) ** 3)) * 4)


@pytest.mark.parametrize("method", ["set", "rigl", "prune"])
def test_conv_layers_group_along_the_flattened_input_and_kernel(method: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))  # conv rows: 27 = 6·4 + 3
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    config = core_config(method, 0.5, structure="2:4", drop_fraction=0.5)
    controller = TopologyController([SparseGroup("q", net, optimizer)], config, total_steps=50, seed=0)
    controller.init_masks()
    conv = controller.groups[0].layers[0]
    assert conv.allocated == 8 * (6 * 2 + 2)
    masks = [conv.mask.clone()]
    for t in range(1, 51):
        loss = net(torch.randn(4, 3, 6, 6)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        controller.step(t)
        controller.check_invariants()
        masks.append(conv.mask.clone())
    assert not torch.equal(masks[0], masks[-1])
    assert NMStructure(2, 4).problem(conv.mask) is None and conv.active == conv.allocated


def test_rigl_drops_the_smallest_weights_and_regrows_the_largest_gradients_of_the_same_group() -> None:
    nm = NMStructure(2, 4)
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0]], dtype=torch.bool)
    weight = torch.tensor([[0.1, 5.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0]])
    grad = torch.tensor([[0.0, 0.0, 1.0, 9.0, 0.0, 8.0, 0.0, 7.0]])  # group 2's best gradient is larger than group 1's
    layer = MaskedLayer("l", nn.Linear(8, 1, bias=False))
    layer.module.register_buffer("weight_mask", mask.clone())
    with torch.no_grad():
        layer.module.weight.copy_(weight)
    layer.dense_grad = grad
    updater = RigLUpdater(
        core_config("rigl", 0.5, structure="2:4", drop_fraction=0.25, drop_fraction_schedule="constant"), 100
    )
    new = updater.next_mask(layer, 10, torch.Generator())
    # drop floor(0.25 · 4) = 1: the smallest |w| (0.1, group 1); group 1 regrows its largest |g| (9.0 at 3), not 8.0
    assert new.tolist() == [[False, True, False, True, True, False, True, False]]
    assert nm.problem(new) is None


def test_set_and_rigl_reset_the_optimizer_state_at_changed_positions() -> None:
    agent = make_toy_agent("rigl", 0.5, total_steps=STEPS, structure="2:4", drop_fraction=0.5)
    for t in range(1, 10):
        agent.train_step(t)
    before = {id(layer): layer.mask.clone() for g in agent.controller.groups for layer in g.layers}
    agent.train_step(10)  # an update step
    assert agent.controller.last_update_step == 10
    grown = 0
    for group in agent.controller.groups:
        for layer in group.layers:
            new = layer.mask & ~before[id(layer)]
            grown += int(new.sum())
            assert torch.all(layer.weight.detach()[new] == 0)
            for state in layer.optimizer_state(group.optimizer):
                assert torch.all(state[new] == 0)
                assert torch.all(state[~layer.mask] == 0)
    assert grown > 0


def test_check_invariants_catches_a_broken_group() -> None:
    agent = make_toy_agent("static", 0.5, structure="2:4")
    layer = agent.controller.groups[0].layers[0]
    row = layer.mask[0]
    off, on = int((~row[:4]).nonzero()[0]), int(row[4:8].nonzero()[0]) + 4
    new = layer.mask.clone()
    new[0, off], new[0, on] = True, False  # same total, groups 3 and 1
    layer.set_mask(new)
    with pytest.raises(SparsityInvariantError, match="group 0 of row 0"):
        agent.controller.check_invariants()


def test_an_unquoted_yaml_structure_is_explained() -> None:
    from omegaconf import OmegaConf

    value = OmegaConf.create("structure: 2:4").structure  # YAML 1.1: base-60 integer 124
    with pytest.raises(ValueError, match="quote it") as error:
        NMStructure.parse(str(value))
    assert "\n" not in str(error.value)
    assert NMStructure.parse(OmegaConf.create("structure: '2:4'").structure) == NMStructure(2, 4)


@pytest.mark.parametrize(
    ("structure", "message"),
    [("3:2", "1 <= N < M"), ("a:b", "must be N:M"), ("4:4", "1 <= N < M"), ("2-4", "must be N:M")],
)
def test_bad_structures_are_one_line_errors(structure: str, message: str) -> None:
    cfg = compose_run(
        ["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.sparsity=0.5", f"sparsity.structure={structure}"]
    )
    with pytest.raises(UsageError, match=message) as error:
        plan_run(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["agent=dqn", "env=CartPole", "sparsity=dense"], "valid methods: static, set, rigl, prune"),
        (["agent=dqn", "env=CartPole", "sparsity=dense_matched"], "valid methods: static, set, rigl, prune"),
        (["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.sparsity=0.5", "sparsity.wide=true"], "sparsity.wide=true"),
        (["agent=dqn", "env=CartPole", "sparsity=rigl"], r"set sparsity.sparsity=0.5 \(got 0.9\)"),
        (
            ["agent=sac", "env=Pendulum", "sparsity=set", "sparsity.sparsity=0.5", "sparsity.actor=0.8"],
            r"set sparsity.actor=0.5 \(got 0.8\)",
        ),
    ],
)
def test_structure_refuses_dense_methods_and_other_sparsities(overrides: list[str], message: str) -> None:
    cfg = compose_run([*overrides, "sparsity.structure=2:4"])
    with pytest.raises(UsageError, match=message) as error:
        plan_run(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("agent", "env", "method", "structure"), [("dqn", "CartPole", "rigl", "2:4"), ("sac", "Pendulum", "prune", "1:4")]
)
def test_tiny_sb3_run_keeps_the_structure_and_records_it(agent, env, method, structure, tmp_path) -> None:
    nm = NMStructure.parse(structure)
    overrides = [f"agent={agent}", f"sparsity={method}", f"sparsity.sparsity={nm.sparsity}", f"sparsity.structure={structure}"]
    cfg = compose_run([*overrides, *TINY[agent], *COMMON, "sparsity.update_interval=5", f"run_root={tmp_path}"])
    plan = plan_run(cfg)
    assert plan.run_dir.parent.name == f"{method}_{nm.n}of{nm.m}_s{nm.sparsity}"  # not the unstructured {method}_s…
    assert env in plan.run_dir.parts
    summary = train(plan)
    assert summary["status"] == "completed" and summary["topology"]["num_updates"] > 0
    saved = json.loads((plan.run_dir / "summary.json").read_text())
    assert saved["structure"] == structure
    from agents import AGENTS

    model = AGENTS.get(agent).algo.load(plan.run_dir / "model.zip")
    masks = {k: v for k, v in model.policy.state_dict().items() if k.endswith("weight_mask")}
    assert masks
    for key, mask in masks.items():  # SAC Pendulum's 3 inputs are one partial group of 3: it keeps min(1, 3)
        counts = nm.group_counts(mask)
        assert torch.equal(counts, _expected_counts(tuple(mask.shape), nm.n, nm.m).expand_as(counts)), key


def test_analysis_labels_structured_runs_as_their_own_method(tmp_path) -> None:
    from analysis.loading import _identify, _read_config
    from analysis.records import RunRecord

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "agent: {name: dqn}\nenv: {name: CartPole}\nsparsity: {method: rigl, sparsity: 0.5, structure: '2:4'}\nseed: 0\n"
    )
    record = RunRecord(run_dir)
    _identify(record, _read_config(record), {"method": "rigl", "structure": "2:4", "sparsity": 0.5})
    assert record.method == "rigl_2of4"
    assert not [issue for issue in record.issues if "summary" in str(issue)]


def test_population_engine_trains_n_of_m_members_unchanged(tmp_path) -> None:
    from tests.test_population import _assert_member_invariants, _trainer

    extra = ("sparsity.sparsity=0.5", "sparsity.structure=2:4")
    trainer = _trainer("dqn", tmp_path, [(0, "rigl"), (1, "prune")], *extra, total=300)
    before = [[layer.mask.clone() for g in m.controller.groups for layer in g.layers] for m in trainer.members]
    trainer.learn()
    _assert_member_invariants(trainer)
    nm = NMStructure(2, 4)
    for member, masks in zip(trainer.members, before):
        layers = [layer for g in member.controller.groups for layer in g.layers]
        assert any(not torch.equal(a, layer.mask) for a, layer in zip(masks, layers))
        for layer in layers:
            assert nm.problem(layer.mask) is None, (member.plan.sparsity.method, layer.name)
    summaries = trainer.finish()
    assert [s["structure"] for s in summaries] == ["2:4", "2:4"]
