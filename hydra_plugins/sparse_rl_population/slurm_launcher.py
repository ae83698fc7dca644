"""``hydra/launcher=slurm``: a sweep's jobs as SLURM job arrays, for grids of any size (docs/design.md decision 38).

    python -m sparse_rl.run -m hydra/launcher=slurm hydra.launcher.partition=cpu +experiment=paper_sac_mujoco

What it adds to hydra-submitit-launcher's ``SlurmLauncher`` (whose settings it takes, ``configs/hydra/launcher/slurm.yaml``):

- **Checked on the submit host, fast**: every job is composed (:class:`experiment.grid.SweepComposer`) and planned
  (:func:`experiment.plan.plan_run`: bad input is skipped with one line, nothing is submitted for it). A completed
  run is not submitted (with ``resume=auto``); nor is a run that a live job holds.
- **Arrays no larger than the cluster allows**: ``max_array_size`` tasks per ``sbatch --array`` (default 1000).
- **Small submissions**: each task ships its own composed config (a few kB), not the launcher and the whole sweep.
- **Requeue-safe**: jobs run with ``resume`` = the launcher's ``resume`` (default ``auto``) unless the sweep sets
  ``resume=`` itself; a requeued job (timeout or preemption, after the run checkpointed on submitit's warning signal)
  always continues with ``resume=auto``.
- **A grid survives its jobs**: a job that ends without a result (``scancel``, OOM kill, node failure) is recorded in
  its run directory (:func:`experiment.grid.record_ended`) and the others go on; the sweep's exit status says whether
  every job completed (:mod:`hydra_plugins.sparse_rl_population.grid_sweeper`).
- ``wait: false``: submit and return at once (the login shell may close); ``python -m sparse_rl.grid status`` shows
  the grid's state later and ``python -m sparse_rl.grid resubmit`` submits what is missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sparse_rl_population.slurm_jobs import Ended, make_executor, say, submit_chunked, wait_all

log = logging.getLogger(__name__)
OWN_KEYS = ("max_array_size", "wait", "resume", "poll_s", "submitit_folder", "mem_gb")


class SweepJob:
    """What one array task runs: the SB3 path on a config composed and resolved on the submit host.

    Returns ``("completed", score)``, ``("failed", message)`` or ``("skipped", message)``. submitit calls
    :meth:`checkpoint` on its warning signal (``--signal=USR2@signal_delay_s``) after the run has checkpointed and
    recorded ``interrupted`` (experiment/interrupts.py); the requeued task continues with ``resume=auto``.
    """

    def __call__(self, config: dict[str, Any]) -> tuple[str, Any]:
        from experiment.plan import JobFailed, JobSkipped
        from experiment.sb3 import run_job

        cfg = OmegaConf.create(config)
        OmegaConf.set_struct(cfg, True)
        try:
            return "completed", run_job(cfg, multirun=True)
        except JobSkipped as error:
            return "skipped", str(error)
        except JobFailed as error:
            return "failed", str(error)

    def checkpoint(self, config: dict[str, Any]) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, {**config, "resume": "auto"})


def estimate_mem_gb(config: dict[str, Any]) -> int:
    """Memory to request for a job, from its replay buffer (:func:`experiment.memory.job_mem_gb`)."""
    from experiment.memory import job_mem_gb

    return job_mem_gb(OmegaConf.create(config))


class GridSlurmLauncher(Launcher):
    """Settings: hydra-submitit-launcher's SLURM keys plus ``max_array_size``, ``wait``, ``resume``, ``poll_s``; and
    ``mem_gb: auto`` (from each job's replay buffer). See the module docstring."""

    composes_all_jobs = True  # the sweeper leaves composing to launch()

    def __init__(self, **params: Any) -> None:
        super().__init__()
        params = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in params.items()}
        self.max_array_size = int(params.pop("max_array_size"))
        self.wait = bool(params.pop("wait"))
        self.resume = params.pop("resume")
        self.poll_s = float(params.pop("poll_s"))
        self.folder = str(params.pop("submitit_folder"))
        self.mem_gb = params.pop("mem_gb")
        self.params = params  # for submitit
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from experiment.grid import check_sweep_jobs, job_return, record_ended

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        if self.max_array_size < 1:
            raise SystemExit(f"error: hydra.launcher.max_array_size must be >= 1, got {self.max_array_size}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        configs = self._compose(job_overrides)
        checked = check_sweep_jobs(configs)  # (index, outcome, value) for jobs not to submit; the rest are submitted
        done = {index: (outcome, value) for index, outcome, value in checked}
        to_submit = [i for i in range(len(configs)) if i not in done]
        returns: list[JobReturn | None] = [None] * len(configs)
        for index, (outcome, value) in done.items():
            returns[index] = job_return(job_overrides[index], None, outcome, value)
        say(
            f"slurm: {len(configs)} job(s) composed and checked in {time.perf_counter() - start:.0f} s: "
            f"{len(to_submit)} to submit, " + ", ".join(f"{n} {o}" for o, n in _count(o for o, _ in done.values()).items())
        )
        if to_submit:
            start = time.perf_counter()
            jobs = self._submit([configs[i] for i in to_submit])
            say(f"slurm: submitted in {time.perf_counter() - start:.0f} s")
            if not self.wait:
                for index, job in zip(to_submit, jobs):
                    returns[index] = job_return(job_overrides[index], None, "submitted", job.job_id)
                say(
                    f"slurm: submitted {len(jobs)} job(s) ({_arrays(jobs)}); check later with: "
                    f"python -m sparse_rl.grid status {' '.join(_user_overrides(self.config))}"
                )
            else:
                say(f"slurm: waiting for {len(jobs)} job(s) ({_arrays(jobs)}); logs in {self.folder}")

                def finished(position: int, result: Any) -> None:
                    index = to_submit[position]
                    run_dir = Path(str(configs[index]["run_dir"]))
                    if isinstance(result, Ended):
                        record_ended(run_dir, result.state, jobs[position].job_id)
                        outcome, value = _ended_outcome(run_dir, result.state, jobs[position].job_id)
                    elif isinstance(result, tuple):
                        outcome, value = result
                    else:
                        outcome, value = "failed", f"{run_dir}: {str(result).strip().splitlines()[-1]}"
                    returns[index] = job_return(job_overrides[index], None, outcome, value)

                wait_all(jobs, self.poll_s, finished)
        return [ret for ret in returns if ret is not None]

    def _compose(self, job_overrides: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        """Every job's own config, resolved here (``${hydra:...}`` too), ``resume`` set unless the sweep sets it."""
        from experiment.grid import composer_for, has_override

        assert self.config is not None and self.hydra_context is not None
        composer = composer_for(self.hydra_context.config_loader, self.config)
        configs = []
        for index, overrides in enumerate(job_overrides):
            config = composer.compose_task(overrides, index)
            if not has_override(overrides, "resume"):
                config["resume"] = self.resume
            configs.append(config)
        HydraConfig.instance().set_config(self.config)
        return configs

    def _submit(self, configs: list[dict[str, Any]]) -> list[Any]:
        """Submit in arrays of at most ``max_array_size``, one array per memory request."""
        params = dict(self.params)
        if self.mem_gb != "auto":
            executor = make_executor({**params, "mem_gb": self.mem_gb}, self.folder)
            return submit_chunked(executor, SweepJob(), configs, self.max_array_size)
        by_mem: dict[int, list[int]] = {}
        for index, config in enumerate(configs):
            by_mem.setdefault(estimate_mem_gb(config), []).append(index)
        jobs: list[Any] = [None] * len(configs)
        for mem_gb, indices in sorted(by_mem.items()):
            executor = make_executor({**params, "mem_gb": mem_gb}, self.folder)
            submitted = submit_chunked(executor, SweepJob(), [configs[i] for i in indices], self.max_array_size)
            for index, job in zip(indices, submitted):
                jobs[index] = job
        return jobs


def _ended_outcome(run_dir: Path, state: str, job_id: str) -> tuple[str, Any]:
    """A job without a result: ``completed`` if its run says so, else ``interrupted`` or ``failed`` as recorded."""
    from experiment.grid import run_state
    from experiment.run_dir import completed_score

    now = run_state(run_dir)
    if now == "completed":
        return "completed", completed_score(run_dir)
    message = f"{run_dir}: cluster job {job_id} ended {state or 'UNKNOWN'} without a result; the run is {now}"
    return ("interrupted" if now == "interrupted" else "failed"), message


def _count(outcomes: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _arrays(jobs: Sequence[Any]) -> str:
    arrays = sorted({str(job.job_id).split("_")[0] for job in jobs}, key=lambda a: (len(a), a))
    return f"array{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}"


def _user_overrides(config: DictConfig) -> list[str]:
    """The command line's overrides, quoted for a shell, to repeat them in ``sparse_rl.grid``."""
    import shlex

    internal = ("hydra.mode=", "hydra.launcher.wait=")
    hydra_overrides = [o for o in config.hydra.overrides.hydra if not str(o).startswith(internal)]
    return [shlex.quote(str(o)) for o in [*hydra_overrides, *config.hydra.overrides.task]]
