"""Dependencies point one way: the sparse core and the analysis import neither SB3 nor gymnasium."""

import subprocess
import sys

import pytest

CORE_AND_ANALYSIS = [
    "sparse_rl", "sparse_rl.masks", "sparse_rl.distributions", "sparse_rl.schedules", "sparse_rl.updaters",
    "sparse_rl.controller", "sparse_rl.accounting", "sparse_rl.sparse_init", "sparse_rl.width", "experiment.layout",
    "experiment.layout", "experiment.checkpoint", "experiment.schema", "analysis", "sparse_rl.analyze",
    "sparse_rl.batched", "analysis.robustness", "experiment.summary", "sparse_rl.structure", "sparse_rl.diagnostics",
    "agents.initialization", "agents.decay",  # torch-only parts of agents/, shared with the population engine
    "experiment.lock", "experiment.run_dir",
]  # fmt: skip


@pytest.mark.parametrize("module", CORE_AND_ANALYSIS)
def test_module_imports_neither_sb3_nor_gymnasium(module):
    code = f"import sys, {module}; print(sorted(m for m in ('stable_baselines3', 'gymnasium') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"{module} pulls in {result.stdout.strip()}"
