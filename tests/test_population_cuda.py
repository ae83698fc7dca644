"""The population engine on CUDA: the captured CUDA graph computes what the eager update computes (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from experiment.population_records import PopulationRun
from tests.test_population import _assert_member_invariants, _plans

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("agent", ["sac", "dqn"])
def test_cuda_graph_update_equals_eager_update(agent, tmp_path):
    members = [(0, "rigl"), (1, "dense"), (2, "prune")]
    runs = {}
    for graph in (False, True):
        plans = _plans(agent, tmp_path / str(graph), members)
        trainer = PopulationRun(plans, [32, 32], tmp_path / f"p{graph}", "cuda", graph)
        trainer.learn()
        assert trainer.cuda_graph == graph and (trainer.loop._graph is not None) == graph
        _assert_member_invariants(trainer)
        runs[graph] = trainer
    eager, graphed = runs[False].agent.state_dict(), runs[True].agent.state_dict()
    for name, tensor in eager.items():
        torch.testing.assert_close(graphed[name], tensor, atol=1e-5, rtol=1e-4, msg=name)
    for a, b in zip(runs[False].members, runs[True].members):
        assert a.controller.num_updates == b.controller.num_updates > 0 or a.plan.sparsity.method == "dense"
