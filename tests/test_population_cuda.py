"""The population engine on CUDA (skipped without a GPU): the captured population step computes what the eager step
and the CPU compute, with one host→device and one device→host copy per step; TF32's deviation is bounded."""

from __future__ import annotations

import pytest
import torch

from experiment.population import use_tf32
from experiment.population_records import PopulationRun
from tests.test_population import _assert_member_invariants, _member_state, _plans

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

MEMBERS = [(0, "rigl"), (1, "dense"), (2, "prune")]


def _run(agent: str, root, device: str, graph: bool, total: int = 400, members=MEMBERS) -> PopulationRun:
    plans = _plans(agent, root / f"{device}_{graph}", members, total=total)
    trainer = PopulationRun(plans, [32, 32], root / f"population_{device}_{graph}", device, graph)
    trainer.learn()
    return trainer


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_cuda_graph_step_equals_eager_step(agent, tmp_path):
    use_tf32(False)
    runs = {graph: _run(agent, tmp_path, "cuda", graph) for graph in (False, True)}
    assert runs[True].cuda_graph and runs[True].loop._graphs  # the population step was captured and replayed
    assert not runs[False].loop._graphs
    for trainer in runs.values():
        _assert_member_invariants(trainer)
    for seed, _ in MEMBERS:
        eager, graphed = _member_state(runs[False], seed), _member_state(runs[True], seed)
        for key, tensor in eager.items():
            torch.testing.assert_close(graphed[key], tensor, atol=1e-5, rtol=1e-4, msg=f"{seed} {key}")
    for a, b in zip(runs[False].members, runs[True].members):
        assert a.controller.num_updates == b.controller.num_updates > 0 or a.plan.sparsity.method == "dense"


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_cuda_population_equals_the_cpu_population(agent, tmp_path):
    """Same members, same streams: the warm-up transitions are the same numbers and the short run stays within
    float32 rounding of the CPU's (TF32 off)."""
    use_tf32(False)
    cpu, cuda = _run(agent, tmp_path, "cpu", False, total=200), _run(agent, tmp_path, "cuda", True, total=200)
    warmup = 100  # learning_starts of _plans
    for name, stored in cpu.loop.replay.storage.items():
        assert torch.equal(cuda.loop.replay.storage[name][:, :warmup].cpu(), stored[:, :warmup]), name
    for seed, _ in MEMBERS:
        expected, found = _member_state(cpu, seed), _member_state(cuda, seed)
        for key, tensor in expected.items():
            if key.endswith("/mask"):
                assert torch.equal(found[key].cpu(), tensor), (seed, key)
            else:
                torch.testing.assert_close(found[key].cpu(), tensor, atol=1e-3, rtol=1e-3, msg=f"{seed} {key}")


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_tf32_stays_within_its_documented_tolerance(agent, tmp_path):
    """``tf32=true`` changes one update by about TF32's 10-bit mantissa (2^-11 relative per product): the same update
    from the same state with and without it agrees to 1e-2 relative."""
    results = []
    for tf32 in (False, True):
        use_tf32(tf32)
        trainer = _run(agent, tmp_path / str(tf32), "cuda", False, total=101)  # warm-up, then one gradient step
        results.append({seed: _member_state(trainer, seed) for seed, _ in MEMBERS})
    use_tf32(False)
    for seed, _ in MEMBERS:
        for key, tensor in results[0][seed].items():
            torch.testing.assert_close(results[1][seed][key], tensor, atol=1e-4, rtol=1e-2, msg=f"{seed} {key}")


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_one_copy_each_way_per_population_step(agent, tmp_path):
    """In the steady state a population step is one host→device copy (the transition and the next observation),
    one graph replay and one device→host copy (the next actions). Members without topology updates, and the
    records' occasional reads (rollout logs, the final finite-weights check) switched off for the measured steps."""
    use_tf32(False)
    trainer = _run(agent, tmp_path, "cuda", True, total=150, members=[(0, "dense"), (1, "static")])
    steps = 20
    trainer.total += steps
    trainer._log_rollout = lambda member: None
    trainer.loop.check_members = lambda hooks: None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        trainer.learn(nan_check_freq=10**9)
    names = [event.name for event in profile.events()]
    assert sum("Memcpy HtoD" in name for name in names) == steps
    assert sum("Memcpy DtoH" in name for name in names) == steps


def test_ppo_population_on_cuda_equals_the_cpu_population(tmp_path):
    """PPO members (design 41; the rollout loop runs eagerly on CUDA): the same members and streams on the GPU stay
    within float32 rounding of the CPU's through two rollouts and their epochs (TF32 off); invariants hold; the
    first rollout's stored observations start equal."""
    from tests.test_population_ppo import _ppo_member_state, _ppo_plans

    use_tf32(False)
    members = [(0, "rigl"), (1, "dense")]
    runs = {}
    for device in ("cpu", "cuda"):
        plans = _ppo_plans(tmp_path / device, members, "Pendulum", "agent.total_timesteps=128")
        runs[device] = PopulationRun(plans, [32, 32], tmp_path / device / "population", device, True)
        runs[device].learn()
        _assert_member_invariants(runs[device])
    assert not runs["cuda"].cuda_graph
    assert torch.equal(runs["cuda"].loop.buffer["obs"][0].cpu(), runs["cpu"].loop.buffer["obs"][0])
    for seed, _ in members:
        expected, found = _ppo_member_state(runs["cpu"], seed), _ppo_member_state(runs["cuda"], seed)
        for key, tensor in expected.items():
            if key.endswith("/mask"):
                assert torch.equal(found[key].cpu(), tensor), (seed, key)
            else:
                torch.testing.assert_close(found[key].cpu(), tensor, atol=1e-3, rtol=1e-3, msg=f"{seed} {key}")
