"""Sparse-IFT (sparse_rl/ift.py): Parallel, Factorized, Doped hidden layers, iso-FLOP per layer by construction."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from experiment.plan import plan_run
from experiment.sb3 import train
from sparse_rl import SparseGroup, TopologyController
from sparse_rl.ift import SparseDoped, SparseFactorized, SparseParallel, iso_flop_blocks, transform_hidden_layers_
from tests.agent_helpers import COMMON, TINY, compose_run
from tests.conftest import core_config

KINDS = ["parallel", "factorized", "doped"]


def _hand_count(kind: str, d_in: int, d_out: int, s: float) -> dict:
    """Sizes and MACs written from Thangarasa et al. 2023 Table 1 (independent of sparse_rl.ift)."""
    dense = d_in * d_out
    if kind == "parallel":
        k = round(1 / (1 - s))
        return {"branches": k, "positions": k * dense, "dense_macs": 0}
    if kind == "factorized":
        r = math.ceil(round(dense / ((1 - s) * (d_in + d_out)), 9))  # 320.00000000000006 is 320
        return {"inner": r, "positions": r * (d_in + d_out), "dense_macs": 0}
    r = math.floor(round(s * dense / (d_in + d_out), 9))
    return {"rank": r, "positions": dense, "dense_macs": r * (d_in + d_out)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("d_in", "d_out", "s"), [(64, 64, 0.9), (4, 64, 0.9), (256, 256, 0.75), (17, 256, 0.5)])
def test_sizes_follow_the_paper_and_the_forward_matches_the_parts(kind, d_in, d_out, s) -> None:
    net = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, 3))
    assert transform_hidden_layers_(net, kind, s) == ["0"]
    block, hand = net[0], _hand_count(kind, d_in, d_out, s)
    x = torch.randn(5, d_in)
    if kind == "parallel":
        assert isinstance(block, SparseParallel) and len(block.branches) == hand["branches"]
        assert sum(b.bias is not None for b in block.branches) == 1
        expected = sum(b(x) for b in block.branches)
    elif kind == "factorized":
        assert isinstance(block, SparseFactorized) and block.u.out_features == hand["inner"]
        expected = block.v(block.u(x))
    else:
        assert isinstance(block, SparseDoped) and block.rank == hand["rank"]
        expected = block.sparse(x) + (block.low_v(block.low_u(x)) if block.rank else 0)
    assert torch.allclose(block(x), expected)
    assert type(net[2]) is nn.Linear  # the output layer is left alone


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["static", "set", "rigl", "prune"])
def test_the_controller_holds_each_transformed_layer_at_the_dense_flops(kind, method) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    transform_hidden_layers_(net, kind, 0.9)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    controller = TopologyController([SparseGroup("q", net, optimizer)], core_config(method, 0.9), total_steps=50, seed=0)
    controller.init_masks()
    for t in range(1, 51):
        loss = net(torch.randn(8, 6)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        controller.step(t)
        controller.check_invariants()
    assert controller.final_allocation_problem() is None
    stats = controller.stats()["groups"]["q"]["iso_flop_layers"]
    assert set(stats) == {"0", "2"}
    for name, (d_in, d_out) in {"0": (6, 64), "2": (64, 64)}.items():
        hand_dense = 2 * d_in * d_out  # 2 FLOPs per multiply-accumulate
        assert stats[name]["dense_flops"] == hand_dense
        assert abs(stats[name]["flops"] - hand_dense) <= 1
        active = sum(int(m.weight_mask.sum()) for m in net[int(name)].modules() if isinstance(m, nn.Linear))
        assert 2 * active == stats[name]["flops"]  # the masks themselves, counted by hand


@pytest.mark.parametrize(
    ("agent", "method", "kind"),
    [("dqn", "rigl", "parallel"), ("dqn", "prune", "doped"), ("sac", "static", "factorized"), ("td3", "set", "doped")],
)
def test_sb3_runs_record_iso_flop_layers_and_save_plain_models(agent, method, kind, tmp_path) -> None:
    overrides = [f"agent={agent}", f"sparsity={method}", "sparsity.sparsity=0.9", f"sparsity.ift={kind}"]
    cfg = compose_run([*overrides, *TINY[agent], *COMMON, "sparsity.update_interval=5", f"run_dir={tmp_path}/r"])
    plan = plan_run(cfg)
    summary = train(plan)
    assert summary["status"] == "completed"
    saved = json.loads((plan.run_dir / "summary.json").read_text())
    assert saved["ift"] == kind
    layers = {f"{g}/{n}": e for g, group in saved["groups"].items() for n, e in group.get("iso_flop_layers", {}).items()}
    assert len(layers) == (2 if agent == "dqn" else 2 + 2 * 2)  # hidden layers: DQN's q; SAC/TD3's actor + twin critics
    for name, entry in layers.items():
        assert entry["kind"] == kind and abs(entry["flops"] - entry["dense_flops"]) <= 1, name
    from agents import AGENTS

    model = AGENTS.get(agent).algo.load(plan.run_dir / "model.zip")  # a plain SB3 load rebuilds the layers
    # DQN: q_net, q_net_target; SAC: actor, critic, critic_target; TD3: actor, actor_target, critic, critic_target
    online_and_target = {"dqn": 2 + 2, "sac": 2 + 4 + 4, "td3": 2 + 2 + 4 + 4}
    assert len(iso_flop_blocks(model.policy)) == online_and_target[agent]
    state = model.policy.state_dict()
    for key, mask in ((k, v) for k, v in state.items() if k.endswith("weight_mask")):
        assert torch.count_nonzero(state[key.replace("weight_mask", "weight")][~mask]) == 0, key


@pytest.mark.parametrize("kind", KINDS)
def test_a_transformed_run_has_its_own_run_directory_and_method(kind, tmp_path) -> None:
    """Failed before sparsity.ift existed: a transformed run shared the plain run's rigl_s0.9 directory and label."""
    from omegaconf import OmegaConf

    from analysis.loading import load_run

    cfg = compose_run(["agent=dqn", "env=CartPole", "sparsity=rigl", f"sparsity.ift={kind}", f"run_root={tmp_path}"])
    assert str(cfg.run_dir) == f"{tmp_path}/dqn/CartPole/rigl_{kind}_s0.9/seed_0"
    plain = compose_run(["agent=dqn", "env=CartPole", "sparsity=rigl", f"run_root={tmp_path}"])
    assert str(plain.run_dir) == f"{tmp_path}/dqn/CartPole/rigl_s0.9/seed_0"
    run_dir = tmp_path / "saved"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    assert load_run(run_dir).method == f"rigl_{kind}"
    (run_dir / ".hydra" / "config.yaml").write_text(": not yaml [")  # from summary.json alone (config unreadable)
    (run_dir / "summary.json").write_text(
        json.dumps({"status": "completed", "agent": "dqn", "env": "CartPole", "method": "rigl", "ift": kind,
                    "sparsity": 0.9, "seed": 0, "score": 1.0})
    )  # fmt: skip
    assert load_run(run_dir).method == f"rigl_{kind}"


def test_resume_refuses_a_changed_transformation_but_not_a_run_saved_before_the_key(tmp_path) -> None:
    from omegaconf import OmegaConf

    from experiment.checkpoint import RESUME_IDENTITY_KEYS, first_difference

    base = ["agent=dqn", "env=CartPole", "sparsity=rigl", f"run_root={tmp_path}"]
    saved = OmegaConf.to_container(compose_run([*base, "sparsity.ift=doped"]), resolve=True)
    changed = compose_run([*base, "sparsity.ift=parallel"])
    assert first_difference(changed, OmegaConf.create(saved), RESUME_IDENTITY_KEYS) == ("sparsity.ift", "doped", "parallel")
    assert first_difference(compose_run([*base, "sparsity.ift=null"]), OmegaConf.create(saved), RESUME_IDENTITY_KEYS)
    saved["sparsity"].pop("ift")  # a run saved before sparsity.ift existed trained untransformed layers
    assert first_difference(compose_run(base), OmegaConf.create(saved), RESUME_IDENTITY_KEYS) is None


def test_structure_and_sparse_ift_do_not_combine() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    transform_hidden_layers_(net, "parallel", 0.5)
    config = core_config("static", 0.5, structure="2:4")
    controller = TopologyController([SparseGroup("q", net, torch.optim.Adam(net.parameters()))], config, 10, seed=0)
    with pytest.raises(ValueError, match="Sparse-IFT layers"):
        controller.init_masks()


def test_unknown_kind_names_the_valid_ones() -> None:
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(KeyError, match="valid choices: doped, factorized, parallel"):
        transform_hidden_layers_(net, "wide", 0.5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["sparsity.ift=wide"], "unknown sparsity.ift 'wide'; valid choices: doped, factorized, parallel, null"),
        (["sparsity=dense"], "sparsity.ift=doped transforms a sparse network's layers; method 'dense' is dense (use static"),
        (["sparsity=dense_matched"], "method 'dense_matched' is dense"),
        (["sparsity.wide=true"], "sparsity.ift=doped and sparsity.wide=true are two Sparse-IFT transformations"),
        (["sparsity.structure='2:4'", "sparsity.sparsity=0.5"], "does not combine with sparsity.structure=2:4"),
        (["agent=ppo"], "sparsity.ift applies to the agents dqn, sac, td3 (SB3's actor, critic and Q builders), not 'ppo'"),
        (["sparsity.ift=null", "+agent.sb3.policy_kwargs.ift={kind:doped,sparsity:{q:0.9}}"],
         "agent.sb3.policy_kwargs.ift is set from sparsity.ift"),
    ],
)  # fmt: skip
def test_bad_ift_settings_are_one_line_errors_before_anything_is_created(extra, message, tmp_path) -> None:
    from experiment.plan import UsageError

    cfg = compose_run(["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.ift=doped", *extra, f"run_root={tmp_path}"])
    with pytest.raises(UsageError) as caught:
        plan_run(cfg)
    assert str(caught.value).startswith(message) or message in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_the_population_engine_refuses_sparse_ift_before_anything_is_created() -> None:
    from agents.population.compose import PopulationConfigError, check_supported

    cfg = compose_run(["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.ift=doped"])
    plan_run(cfg, check_run_dir=False)  # a valid run on the SB3 path
    with pytest.raises(PopulationConfigError, match=r"sparsity\.ift=doped .* it trains Sparse Wide, sparsity\.wide=true"):
        check_supported(cfg)
    check_supported(compose_run(["agent=dqn", "env=CartPole", "sparsity=rigl", "sparsity.wide=true"]))


def test_an_output_layer_followed_by_a_squashing_tanh_is_not_hidden() -> None:
    """SB3's create_mlp(..., squash_output=True) (TD3's actor) ends Linear, Tanh; with Tanh activations the hidden
    layers look the same, so the MLP's depth decides (failed before: a TD3 run transformed its actor's output layer)."""
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1), nn.Tanh())
    assert transform_hidden_layers_(net, "parallel", 0.5, depth=2) == ["0", "2"]
    assert type(net[4]) is nn.Linear
