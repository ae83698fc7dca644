"""``hydra/launcher=population``: a sweep's compatible jobs train together as populations (one batched computation).

    python -m sparse_rl.run -m hydra/launcher=population agent=sac env=HalfCheetah \
        sparsity=static,set,rigl,prune sparsity.sparsity=0.8,0.9 "seed=range(10)" hydra.launcher.device=cuda
    python -m sparse_rl.run -m hydra/launcher=population hydra.launcher.device=cuda \
        +hydra.launcher.slurm.partition=gpu ...        # each population as one SLURM job

Hydra's sweeper expands the overrides into jobs as usual; instead of running them one by one this launcher composes
every job's config and hands them all to :func:`experiment.population.run_jobs` (in this process), or, with
``slurm`` settings, plans and groups them here and submits each population as one SLURM job (submitit; one GPU
when ``device`` is cuda, one CPU plus one per env worker), requeue-safe like ``hydra/launcher=slurm``: jobs run with
``resume=auto`` unless the sweep sets ``resume=``, and a requeued population continues from its checkpoint.
Every job is reported as completed, skipped or failed; the sweep's exit status follows (grid_sweeper.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sparse_rl_population.slurm_jobs import Ended, make_executor, say, submit_one, wait_all

log = logging.getLogger(__name__)


class PopulationJob:
    """What one SLURM job runs: one population's members (configs resolved on the submit host) through
    :func:`experiment.population.run_jobs`. Returns one ``(outcome, value)`` per member; on submitit's warning signal
    the population checkpoints (experiment/interrupts.py) and the requeued job continues with ``resume=auto``."""

    def __call__(self, configs: list[dict[str, Any]], device: str, cuda_graph: bool, env_workers: Any) -> list[tuple]:
        from experiment.population import run_jobs

        cfgs = [OmegaConf.create(config) for config in configs]
        jobs = run_jobs(cfgs, device, cuda_graph, len(cfgs), env_workers)
        return [_member_outcome(job) for job in jobs]

    def checkpoint(self, configs: list[dict[str, Any]], *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, [{**c, "resume": "auto"} for c in configs], *args)


def _member_outcome(job: Any) -> tuple[str, Any]:
    if job.skipped is not None:
        return "skipped", f"{job.cfg.run_dir}: {job.skipped}"
    if job.failed is not None:
        return "failed", f"{job.cfg.run_dir}: {job.failed}"
    return "completed", job.score


class PopulationLauncher(Launcher):
    """Groups a multirun's jobs into populations; its settings come from ``configs/hydra/launcher/population.yaml``."""

    composes_all_jobs = True

    def __init__(
        self,
        device: str = "cpu",
        cuda_graph: bool = True,
        max_members: int = 64,
        env_workers: int | str = "auto",
        slurm: Any = None,
    ) -> None:
        super().__init__()
        self.device, self.cuda_graph, self.max_members, self.env_workers = device, cuda_graph, max_members, env_workers
        self.slurm = OmegaConf.to_container(slurm, resolve=True) if OmegaConf.is_config(slurm) else slurm
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiment.grid import composer_for, has_override, job_return
        from experiment.population import run_jobs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if self.max_members < 1:
            raise SystemExit(f"error: hydra.launcher.max_members must be >= 1, got {self.max_members}")
        composer = composer_for(self.hydra_context.config_loader, self.config)
        configs = []
        for idx, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + idx} : {' '.join(filter_overrides(overrides))}")
            config = composer.compose_task(overrides, initial_job_idx + idx)
            if self.slurm is not None and not has_override(overrides, "resume"):
                config["resume"] = self.slurm.get("resume", "auto")
            configs.append(config)
        HydraConfig.instance().set_config(self.config)
        if self.slurm is not None:
            outcomes = self._on_slurm(configs)
        else:
            cfgs = [OmegaConf.create(c) for c in configs]
            jobs = run_jobs(cfgs, self.device, self.cuda_graph, self.max_members, self.env_workers)
            outcomes = [_member_outcome(job) for job in jobs]
        return [job_return(o, None, outcome, value) for o, (outcome, value) in zip(job_overrides, outcomes)]

    def _on_slurm(self, configs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        """Plan and group here; submit each population as one job; wait (or return at once with ``wait: false``)."""
        from experiment.grid import record_ended
        from experiment.memory import job_mem_gb
        from experiment.population import MEMBERS_PER_ENV_WORKER, plan_jobs

        assert self.slurm is not None
        settings = dict(self.slurm)
        wait = bool(settings.pop("wait", True))
        poll_s = float(settings.pop("poll_s", 30))
        settings.pop("resume", None)
        assert self.config is not None
        folder = str(settings.pop("submitit_folder", None) or Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j")
        cfgs = [OmegaConf.create({**c, "device": "cpu"}) for c in configs]  # the node checks the device
        jobs, groups = plan_jobs(cfgs, self.max_members)
        outcomes: list[tuple[str, Any]] = [_member_outcome(job) for job in jobs]
        submitted = []
        for members in groups:
            positions = [jobs.index(member) for member in members]
            cuda = self.device.startswith("cuda")
            workers = self.env_workers if self.env_workers != "auto" else (
                -(-len(members) // MEMBERS_PER_ENV_WORKER) if cuda and len(members) >= MEMBERS_PER_ENV_WORKER else 0
            )  # fmt: skip
            params = {"cpus_per_task": 1 + int(workers), "gpus_per_node": 1 if cuda else None, **settings}
            if params.get("mem_gb", "auto") == "auto":
                params["mem_gb"] = max(job_mem_gb(cfgs[p]) for p in positions) + len(members) - 1
            executor = make_executor(params, folder)
            member_configs = [configs[p] for p in positions]
            job = submit_one(
                executor, PopulationJob(), member_configs, self.device, self.cuda_graph, self.env_workers,
                what=f"a population of {len(members)}",
            )  # fmt: skip
            submitted.append((job, positions))
            say(f"population of {len(members)} submitted as SLURM job {job.job_id} ({params['cpus_per_task']} CPU(s))")
        if not wait:
            for job, positions in submitted:
                for p in positions:
                    outcomes[p] = ("submitted", job.job_id)
            return outcomes

        def finished(position: int, result: Any) -> None:
            job, positions = submitted[position]
            for member, p in enumerate(positions):
                run_dir = Path(str(configs[p]["run_dir"]))
                if isinstance(result, list):
                    outcomes[p] = tuple(result[member])
                elif isinstance(result, Ended):
                    status = record_ended(run_dir, result.state, job.job_id) or "failed"
                    message = f"{run_dir}: SLURM job {job.job_id} ended {result.state} without a result"
                    outcomes[p] = ("interrupted" if status == "interrupted" else "failed", message)
                else:
                    outcomes[p] = ("failed", f"{run_dir}: {str(result).strip().splitlines()[-1]}")

        wait_all([job for job, _ in submitted], poll_s, finished)
        return outcomes
