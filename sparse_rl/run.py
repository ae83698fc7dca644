"""``python -m sparse_rl.run``: train one agent (or sweep with ``-m``). Thin: parse, then hand over to
:func:`experiment.sb3.run_job` (or a sweep's launcher).

    python -m sparse_rl.run agent=sac env=HalfCheetah sparsity=rigl sparsity.sparsity=0.9 seed=3
    python -m sparse_rl.run -m agent=dqn env=CartPole sparsity=dense,rigl seed=0,1,2

Writes to ``run_dir``: ``.hydra/config.yaml``, ``progress.csv``, TensorBoard events, ``evaluations.npz``,
``checkpoint/``, ``model.zip`` and ``summary.json`` (README "Train").
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiment.cli import argv_problem
from experiment.sb3 import run_job


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the run's score (for sweepers)."""
    return run_job(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    if (problem := argv_problem(sys.argv[1:])) is not None:  # a misspelled key: our one line, not Hydra's "+key"
        sys.exit(f"error: {problem}")
    main()
