"""Hand-built cases for SET, RigL and pruning through the controller's public API."""

import pytest
import torch
from torch import nn

from sparse_rl import UPDATERS, SparseGroup, TopologyController
from sparse_rl.masks import MaskedLayer
from sparse_rl.structure import NMStructure
from sparse_rl.updaters import PruneUpdater, SETUpdater
from tests.conftest import core_config


def single_layer_controller(method: str, **overrides):
    torch.manual_seed(0)
    layer = nn.Linear(4, 4, bias=False)
    opt = torch.optim.Adam(layer.parameters(), lr=0.0)  # lr 0: the step fills Adam state but keeps weights
    config = core_config(
        method, 0.5, update_interval=1, end_fraction=1.0, drop_fraction=0.5, drop_fraction_schedule="constant", **overrides
    )
    controller = TopologyController([SparseGroup("net", layer, opt)], config, total_steps=100, seed=0)
    controller.init_masks()
    return layer, opt, controller


def install(layer, active_positions, weights):
    mask = torch.zeros(16, dtype=torch.bool)
    mask[active_positions] = True
    with torch.no_grad():
        layer.weight_mask.copy_(mask.view(4, 4))
        layer.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(4, 4) * mask.view(4, 4))


def test_rigl_grows_exactly_the_top_k_gradient_positions_and_keeps_regrown_weights():
    layer, opt, controller = single_layer_controller("rigl")
    install(layer, list(range(8)), [1, -2, 3, -4, 5, -6, 7, -8] + [0] * 8)
    grad = torch.full((16,), 0.01)
    grad[[9, 12, 15, 2]] = torch.tensor([10.0, -9.0, 8.0, 7.0])
    grad[5] = 100.0  # kept position: never counts as a growth candidate
    layer.weight.grad = grad.view(4, 4).clone()
    opt.step()  # the pre-step hook snapshots the dense gradient
    for value in opt.state[layer.weight].values():  # make every moment non-zero to see what is reset
        if value.shape == layer.weight.shape:
            value.fill_(1.0)

    assert controller.step(1)

    expected = torch.zeros(16, dtype=torch.bool)
    expected[[4, 5, 6, 7, 9, 12, 15, 2]] = True  # kept: 4 largest |w|; grown: top-4 |grad| outside the kept set
    assert torch.equal(layer.weight_mask.flatten(), expected)
    weights = layer.weight.detach().flatten()
    assert weights[2] == 3.0  # dropped and regrown in the same update keeps its weight
    assert torch.all(weights[[9, 12, 15]] == 0)  # new connections start at 0
    assert torch.all(weights[[0, 1, 3]] == 0)  # dropped
    state = opt.state[layer.weight]
    for key in ("exp_avg", "exp_avg_sq"):
        moments = state[key].flatten()
        changed = [0, 1, 3, 9, 12, 15]
        assert torch.all(moments[changed] == 0), key
        untouched = [i for i in range(16) if i not in changed]
        assert torch.all(moments[untouched] == 1.0), key
    assert state["step"].item() == 1  # the step count is left alone


def test_set_grows_only_outside_the_kept_set_and_conserves_counts():
    layer, _, controller = single_layer_controller("set")
    for t in range(1, 40):
        before = layer.weight_mask.clone()
        kept_weights = layer.weight.detach().abs().flatten()
        layer.weight.grad = torch.randn(4, 4)
        with torch.no_grad():  # give active weights distinct magnitudes
            layer.weight.copy_((torch.rand(4, 4) + 0.1) * layer.weight_mask)
        kept_weights = layer.weight.detach().abs().flatten()
        controller.step(t)
        after = layer.weight_mask
        assert after.sum() == before.sum() == 8
        n_drop = 4
        kept = torch.zeros(16, dtype=torch.bool)
        kept[torch.topk(torch.where(before.flatten(), kept_weights, torch.tensor(-1.0)), 8 - n_drop).indices] = True
        assert torch.all(after.flatten()[kept])  # the largest-|w| active weights survive
        grown_new = after & ~before
        assert torch.all(layer.weight.detach()[grown_new] == 0)
        assert torch.all(layer.weight.detach()[~after] == 0)


def test_prune_only_removes_and_reaches_the_allocation_at_the_end():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    config = core_config("prune", 0.9, update_interval=5, start_fraction=0.2, end_fraction=0.8)
    controller = TopologyController([SparseGroup("q", net, opt)], config, total_steps=200, seed=1)
    controller.init_masks()
    layers = controller.groups[0].layers
    assert all(layer.active == layer.total for layer in layers)  # dense at the start
    previous = [layer.mask.clone() for layer in layers]
    for t in range(1, 201):
        loss = net(torch.randn(8, 6)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        controller.step(t)
        for layer, prev in zip(layers, previous):
            assert not torch.any(layer.mask & ~prev)  # never regrows
        previous = [layer.mask.clone() for layer in layers]
        if t < 40:
            assert all(layer.active == layer.total for layer in layers)
    assert [layer.active for layer in layers] == [layer.allocated for layer in layers]
    assert sum(layer.active for layer in layers) == round(0.1 * (6 * 32 + 32 * 3))
    controller.check_invariants()


def test_updater_registry_lists_the_methods():
    assert UPDATERS.names() == ["dense", "prune", "rigl", "set", "static"]
    with pytest.raises(KeyError, match="dense, prune, rigl, set, static"):
        UPDATERS.get("snip")


class _GrowInactive(SETUpdater):
    """SET's drop rule; growth only where the mask was off, so a dropped weight never comes back in these tests."""

    def grow_scores(self, layer, generator):
        return (~layer.mask).float()


class _DropLargest(_GrowInactive):
    """A different drop rule: the largest |w| go first (kept: the smallest)."""

    def drop_scores(self, layer):
        return -layer.weight.detach().abs()


def _masked_layer(mask, weight):
    layer = MaskedLayer("l", nn.Linear(len(mask[0]), len(mask), bias=False))
    layer.module.register_buffer("weight_mask", torch.tensor(mask, dtype=torch.bool))
    with torch.no_grad():
        layer.module.weight.copy_(torch.tensor(weight))
    return layer


@pytest.mark.parametrize("structure", [None, "2:4"])
def test_a_drop_scores_override_changes_which_weights_are_dropped(structure):
    config = core_config("set", 0.5, structure=structure, drop_fraction=0.25, drop_fraction_schedule="constant")
    mask = [[1, 1, 0, 0, 1, 0, 1, 0]]
    weight = [[0.1, 5.0, 0.0, 0.0, 3.0, 0.0, 4.0, 0.0]]
    kept_by = {}
    for updater_class in (_GrowInactive, _DropLargest):
        layer = _masked_layer(mask, weight)
        new = updater_class(config, 100).next_mask(layer, 10, torch.Generator().manual_seed(0))
        assert int(new.sum()) == 4  # one dropped (floor(0.25 · 4)), one regrown
        kept_by[updater_class] = [i for i in (0, 1, 4, 6) if new[0, i]]  # the initially active positions
        if structure:
            assert NMStructure.parse(structure).problem(new) is None
    assert kept_by[_GrowInactive] == [1, 4, 6]  # the default drop_scores: the smallest |w| (0.1) goes
    assert kept_by[_DropLargest] == [0, 4, 6]  # the override: the largest |w| (5.0) goes


def test_pruning_uses_drop_scores_too():
    class PruneLargest(PruneUpdater):
        def drop_scores(self, layer):
            return -layer.weight.detach().abs()

    config = core_config("prune", 0.5, update_interval=1, start_fraction=0.0, end_fraction=0.1)
    layer = _masked_layer([[1, 1, 1, 1]], [[0.1, 5.0, 3.0, 4.0]])
    layer.allocated = 2
    assert PruneUpdater(config, 100).next_mask(layer, 10, torch.Generator()).tolist() == [[False, True, False, True]]
    assert PruneLargest(config, 100).next_mask(layer, 10, torch.Generator()).tolist() == [[True, False, True, False]]
