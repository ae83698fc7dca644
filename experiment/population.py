"""Entry-point support for the population engine: group a sweep's jobs into populations and train each.

Called by the Hydra launcher ``hydra/launcher=population``
(``hydra_plugins/sparse_rl_population``) with every job's composed config. Jobs that may share one batched computation
(same agent, env, hidden widths, budgets and hyperparameters; they may differ in seed, method, sparsity and weight
decay) form one population of at most ``max_members``; each population is one process's computation. A job the
engine cannot train is skipped with one line; a population that fails records ``status: failed`` in its members'
``summary.json`` and the sweep goes on, like the SB3 path's sweeps.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from experiment.checkpoint import CheckpointWriteError, checkpoint_step
from experiment.interrupts import StopNow, StopSignals
from experiment.lock import LocksUnsupported, RunDirLocked, cleanup_stale_staging, hold_run_dir, holder_of
from experiment.plan import Plan, RunCompletedError, RunDirUsageError, UsageError, plan_run
from experiment.run_dir import clear_run_outputs, completed_score, interrupted_line, resume_command, run_status
from experiment.summary import format_score, record_failure

POPULATION_RECORD = "population.json"  # in each member's run directory: {"population_dir": ...}
POPULATIONS_DIR = ".populations"  # under run_root: one folder per population (its checkpoint)
MEMBERS_PER_ENV_WORKER = 8  # env_workers=auto on CUDA: 8 beat 4 at K = 64 (docs/performance.md)


@dataclass
class Job:
    """One sweep job: its config, its validated plan (or why it was skipped), its population's key."""

    cfg: DictConfig
    plan: Plan | None = None
    skipped: str | None = None
    failed: str | None = None  # why it did not complete (its summary.json says so), for the launcher's exit status
    net_arch: Any = None
    key: str | None = None
    score: float | None = None
    completed: bool = False  # resume=auto found it completed: left untouched


def plan_member(cfg: DictConfig) -> Plan:
    """Validate one job as the SB3 path does, plus what the population engine supports; raises :class:`UsageError`."""
    from agents.population.compose import PopulationConfigError, check_supported

    try:
        check_supported(cfg)
    except PopulationConfigError as error:
        raise UsageError(str(error)) from error
    run_dir = Path(cfg.run_dir)
    if cfg.resume == "auto" and run_status(run_dir) == "completed":
        raise RunCompletedError(f"{run_dir} holds a completed run; it is left untouched")
    if not cfg.resume or (cfg.resume == "auto" and not (run_dir / POPULATION_RECORD).exists()):
        return plan_run(cfg)  # resume=auto without a population run: a fresh start (or the SB3 path's refusal)
    # a population keeps its checkpoint outside the run directory: validate everything else, keep the real run_dir
    probe = copy.deepcopy(cfg)
    with open_dict(probe):
        probe.resume = False
        probe.run_dir = str(Path(tempfile.gettempdir()) / "sparse_rl_probe" / "none")
    plan = plan_run(probe)
    plan.cfg, plan.run_dir = cfg, Path(cfg.run_dir)
    if not (plan.run_dir / POPULATION_RECORD).exists():
        raise UsageError(f"resume=true but {plan.run_dir} holds no population run to resume")
    return plan


def _net_arch(plan: Plan) -> Any:
    """The hidden widths this job trains (equal-parameter variants solve them from the env's spaces)."""
    net_arch = OmegaConf.to_container(plan.cfg.agent.net_arch)
    if plan.variant is None:
        return net_arch
    from agents.matching import equal_parameter_net_arch
    from envs import make_vec_env

    env = make_vec_env(plan.env, 1, 0)
    try:
        solved, _ = equal_parameter_net_arch(
            plan.agent.name, env.observation_space, env.action_space, net_arch, plan.group_sparsity, plan.variant
        )
    finally:
        env.close()
    return solved


def use_tf32(enabled: bool) -> None:
    """``tf32``: float32 matrix products on CUDA in TensorFloat-32 (PyTorch's ``allow_tf32`` switches; "TensorFloat-32
    (TF32) on Ampere (and later) devices" in its CUDA semantics notes). Off by default: it changes the numbers
    (tests/test_population_cuda.py bounds by how much)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def group_jobs(jobs: Sequence[Job], max_members: int) -> list[list[Job]]:
    """Compatible jobs in order of first appearance, split into populations of at most ``max_members``."""
    from agents.population.compose import compatibility_key

    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if job.plan is None:
            continue
        job.net_arch = _net_arch(job.plan)
        job.key = compatibility_key(job.cfg, job.net_arch)
        groups.setdefault(job.key, []).append(job)
    return [members[i : i + max_members] for members in groups.values() for i in range(0, len(members), max_members)]


def recorded_population_dir(run_dirs: Sequence[Path], run_root: Path) -> Path | None:
    """The checkpoint folder the members' ``population.json`` name, if they all name the same one and it exists,
    looked up by its name under ``run_root/.populations`` (so a run_root spelled differently, or moved with its
    populations, finds it); ``None`` otherwise."""
    names = set()
    for run_dir in run_dirs:
        try:
            names.add(Path(str(json.loads((run_dir / POPULATION_RECORD).read_text())["population_dir"])).name)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if len(names) != 1:
        return None
    folder = run_root / POPULATIONS_DIR / names.pop()
    return folder if folder.is_dir() else None


def population_dir(members: Sequence[Job]) -> Path:
    """Where a population keeps its checkpoint: the folder its members' ``population.json`` record
    (:func:`recorded_population_dir`); for a new population one named after its agent, env and the members' run
    directories (resolved: ``runs`` and ``./runs`` give the same name)."""
    cfg = members[0].cfg
    run_dirs = [m.plan.run_dir for m in members]
    if (recorded := recorded_population_dir(run_dirs, Path(cfg.run_root))) is not None:
        return recorded
    digest = hashlib.sha256("\n".join(str(Path(d).resolve()) for d in run_dirs).encode()).hexdigest()[:12]
    return Path(cfg.run_root) / POPULATIONS_DIR / f"{cfg.agent.name}_{str(cfg.env.name).replace('/', '-')}_{digest}"


def train_population(
    members: Sequence[Job], device: str, cuda_graph: bool, env_workers: int, stop: StopSignals | None = None
) -> None:
    """Train one population; record each member's score (a failed population fails its members, the sweep goes on).

    A population whose run directories another process holds, or whose checkpoint cannot continue it, is skipped
    with one line and changes nothing; ``stop`` (:mod:`experiment.interrupts`) ends it with a checkpoint.
    """
    cfg = members[0].cfg
    label = f"population {cfg.agent.name}/{cfg.env.name} × {len(members)}"
    plans = [m.plan for m in members]
    try:
        with contextlib.ExitStack() as held:  # one writer per run directory (experiment.lock), for the whole population
            for member in members:
                held.enter_context(hold_run_dir(member.plan.run_dir))  # creates it; refused before anything is written
            run_dirs = [member.plan.run_dir for member in members]
            for folder in [*run_dirs, population_dir(members)]:  # its checkpoint folder: written only by their holder
                for path in cleanup_stale_staging(folder, owners=run_dirs):
                    print(f"note: removed {path}, left by an interrupted write")
            _train_held(members, plans, device, cuda_graph, env_workers, label, stop)
    except (RunDirLocked, LocksUnsupported, UsageError) as error:  # nothing was written: say why, change nothing
        for member in members:
            member.skipped = str(error)
        print(f"{label}: SKIPPED: {error}", file=sys.stderr)
    except StopNow as error:  # a second signal outside the loop (building, loading, the final save)
        for member in members:
            record_failure(member.plan, error, status="interrupted")
        if stop is None:
            raise
        stop.hand_over(f"{label}: stopped at once by a second {stop.name}; continue with: {resume_command()}")
    except CheckpointWriteError as error:  # disk full: the previous checkpoint is intact
        for member in members:
            record_failure(member.plan, error)
            member.failed = str(error)
        print(f"{label}: FAILED: {error}; recorded in the members' summary.json", file=sys.stderr)
    except Exception as error:  # the whole population failed: every member says so
        for member in members:
            record_failure(member.plan, error)
            member.failed = repr(error)
            print(f"{member.plan.run_dir}: FAILED ({error!r}); recorded in summary.json", file=sys.stderr)


def _resume_from_checkpoint(members: Sequence[Job], folder: Path) -> bool:
    """With ``resume=true``: whether the population continues from its checkpoint (checked file by file, one line
    if it cannot: :class:`~experiment.population_records.PopulationCheckpointProblem`) or, having stopped before its
    first, starts again from scratch (its members' earlier logs removed, as on the SB3 path)."""
    from experiment.population_records import PopulationCheckpointProblem, population_checkpoint_problem

    run_dirs = [member.plan.run_dir for member in members]
    if (problem := population_checkpoint_problem(folder, run_dirs)) is not None:
        raise PopulationCheckpointProblem(problem)
    if checkpoint_step(folder) is not None:
        return True
    if any(clear_run_outputs(run_dir) for run_dir in run_dirs):
        print(f"note: {folder} has no checkpoint yet; starting its members again from scratch")
    return False


def _train_held(
    members: Sequence[Job],
    plans: list[Plan],
    device: str,
    cuda_graph: bool,
    env_workers: int,
    label: str,
    stop: StopSignals | None = None,
) -> None:
    """Train the population whose run directories this process holds; record each member's score."""

    from agents.callbacks import TrainingStopped
    from experiment.numerics import apply_torch_settings
    from experiment.population_records import PopulationRun, population_budget, probe_costs
    from experiment.progress import RunProgress, probe, start_line

    cfg = members[0].cfg
    folder = population_dir(members)
    resuming = bool(cfg.resume) and _resume_from_checkpoint(members, folder)
    apply_torch_settings(cfg)  # as the SB3 path (experiment.sb3.train); torch_threads is part of the population key
    use_tf32(bool(cfg.tf32))
    costs = probe(lambda: probe_costs(plans, members[0].net_arch, device)) if cfg.progress_bar else None
    trainer = PopulationRun(plans, members[0].net_arch, folder, device, cuda_graph, env_workers)
    if resuming:
        trainer.load_checkpoint()
    budget = population_budget(cfg)
    print(start_line(f"{label} ({folder})", budget, trainer.num_timesteps, costs, len(members)), flush=True)
    try:
        with RunProgress(label, budget, trainer.num_timesteps, costs, bool(cfg.progress_bar)) as progress:
            trainer.learn(
                progress.update, checkpoint_freq=int(cfg.checkpoint_freq), nan_check_freq=int(cfg.nan_check_freq),
                stop=None if stop is None else (lambda: stop.requested),
            )  # fmt: skip
    except (TrainingStopped, StopNow) as stopped:  # a stop signal: the checkpoint is written (experiment.interrupts)
        at_once = isinstance(stopped, StopNow)
        saved = checkpoint_step(folder)
        trainer.interrupt(stop.name if stop is not None else None, saved, at_once)
        if stop is None:
            raise
        how = f"interrupted by {stop.name}" + (" (a second signal: stopped at once)" if at_once else "")
        stop.hand_over(interrupted_line(label, trainer.num_timesteps, budget.total, saved, how, resume_command()))
    summaries = trainer.finish()
    for member, summary in zip(members, summaries):
        member.score = summary.get("score")
        if summary["status"] != "completed":
            member.failed = str(summary.get("error", summary["status"]))
        print(f"{member.plan.run_dir}: {summary['status']}, score {format_score(member.score)}")


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask (a SLURM job's cgroup/cpuset shows here), capped by
    ``SLURM_CPUS_PER_TASK`` where a job sets it (https://slurm.schedmd.com/sbatch.html#OPT_SLURM_CPUS_PER_TASK)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(cpus, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else cpus)


def env_workers_for(setting: int | str, device: str, members: int) -> int:
    """``auto``: on CUDA one worker process per 8 members (at most the usable CPUs but one, :func:`usable_cpus`); on
    CPU none (one core trains).

    Eight members per worker balances env time against the main process's per-worker messaging
    (benchmarks/population.py, docs/performance.md).
    """
    if setting != "auto":
        return int(setting)
    if not device.startswith("cuda") or members < MEMBERS_PER_ENV_WORKER:
        return 0
    return max(0, min(usable_cpus() - 1, math.ceil(members / MEMBERS_PER_ENV_WORKER)))


def plan_jobs(cfgs: Sequence[DictConfig], max_members: int) -> tuple[list[Job], list[list[Job]]]:
    """Validate and group every job (nothing trained): the jobs, with why each skipped one was, and the populations.
    With ``resume=auto`` a completed run is done (``completed``, its recorded score), not refused."""
    jobs = [Job(cfg) for cfg in cfgs]
    seen: set[str] = set()
    for job in jobs:
        try:
            if str(job.cfg.run_dir) in seen:  # e.g. a swept key that is not part of the run_dir pattern
                raise UsageError(f"another job of this sweep writes {job.cfg.run_dir}; give each job its own run_dir")
            seen.add(str(job.cfg.run_dir))
            job.plan = plan_member(job.cfg)
        except UsageError as error:
            if isinstance(error, RunCompletedError) and job.cfg.resume == "auto":
                job.completed, job.score = True, completed_score(Path(job.cfg.run_dir))
                print(f"{job.cfg.run_dir}: completed earlier (score {format_score(job.score)}); left untouched")
                continue
            if isinstance(error, RunDirUsageError):  # a live writer explains the run directory's state best (as sb3)
                error = holder_of(Path(job.cfg.run_dir)) or error
            job.skipped = str(error)
            print(f"{job.cfg.run_dir}: SKIPPED: {error}", file=sys.stderr)
    return jobs, group_jobs(jobs, max_members)


def run_jobs(
    cfgs: Sequence[DictConfig], device: str, cuda_graph: bool, max_members: int, env_workers: int | str = "auto"
) -> list[Job]:
    """Validate, group and train every job; returns them with their scores (``None`` where skipped or failed)."""
    jobs, groups = plan_jobs(cfgs, max_members)
    print(f"population engine: {sum(len(g) for g in groups)} runs in {len(groups)} population(s) on {device}")
    with StopSignals() as stop:  # Ctrl-C, SIGTERM, the scheduler's warning: checkpoint, record, one line
        for members in groups:
            train_population(members, device, cuda_graph, env_workers_for(env_workers, device, len(members)), stop)
            if stop.requested:  # it completed while the signal was pending: start no other population
                print(f"{stop.name} received: the remaining populations were not started", file=sys.stderr)
                raise SystemExit(stop.exit_status)
    return jobs
