"""``hydra/launcher=population``: a sweep's compatible jobs train together as populations (one batched computation).

    python -m sparse_rl.run -m hydra/launcher=population agent=sac env=HalfCheetah \
        sparsity=static,set,rigl,prune sparsity.sparsity=0.8,0.9 "seed=range(10)" hydra.launcher.device=cuda

Hydra's sweeper expands the overrides into jobs as usual; instead of running them one by one this launcher composes
every job's config and hands them all to :func:`experiment.population.run_jobs`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


class PopulationLauncher(Launcher):
    """Groups a multirun's jobs into populations; its settings come from ``configs/hydra/launcher/population.yaml``."""

    def __init__(
        self, device: str = "cpu", cuda_graph: bool = True, max_members: int = 64, env_workers: int | str = "auto"
    ) -> None:
        super().__init__()
        self.device, self.cuda_graph, self.max_members, self.env_workers = device, cuda_graph, max_members, env_workers
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiment.population import run_jobs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if self.max_members < 1:
            raise SystemExit(f"error: hydra.launcher.max_members must be >= 1, got {self.max_members}")
        cfgs, hydra_cfgs = [], []
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = initial_job_idx + idx
            task_cfg = copy.deepcopy(sweep_config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            cfgs.append(task_cfg)
            hydra_cfgs.append(sweep_config)
        jobs = run_jobs(cfgs, self.device, self.cuda_graph, self.max_members, self.env_workers)
        returns = []
        for overrides, job, hydra_cfg in zip(job_overrides, jobs, hydra_cfgs):
            ret = JobReturn(overrides=list(overrides), cfg=job.cfg, hydra_cfg=hydra_cfg, working_dir=str(Path.cwd()))
            ret.status, ret.return_value = JobStatus.COMPLETED, job.score
            returns.append(ret)
        return returns
