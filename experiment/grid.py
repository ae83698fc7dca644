"""Grids of runs (a sweep of thousands of jobs): compose their configs fast, report how each job ended, and read a
grid's state back from its run directories (docs/design.md decision 38).

- :class:`SweepComposer`: every job's config as Hydra's ``load_sweep_config`` composes it, but the defaults list is
  composed once per combination of config-group choices (``agent``, ``env``, ``sparsity``, ``+experiment``, ...) and
  each job's value overrides (``seed=3``, ``sparsity.sparsity=0.9``) are applied to a copy, the way Hydra applies them
  (``ConfigLoaderImpl._apply_overrides_to_config``). The paper's SAC grid (2,250 jobs, 25 group combinations) composes
  ~40 times faster (``tests/test_grid.py`` checks equality with Hydra's own composition).
- :func:`job_outcome` / :func:`sweep_report`: what launchers return (Hydra ``JobReturn``s) as ``completed``,
  ``failed``, ``skipped``, ``interrupted``, ``submitted``; one summary line and the sweep's exit status (0 only if
  every job completed, or was submitted by a submit-and-return launch).
- :func:`run_state` / :func:`grid_table`: a run directory's state (``completed``, ``running``, ``failed``,
  ``interrupted``, ``not started``), counted per agent × env × method × sparsity (``python -m sparse_rl.grid status``).
- :func:`record_ended`: a job that ended without a result (cancelled, OOM-killed, node failure) has its run directory
  say so, unless the run recorded its own end.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import get_overrides_dirname  # what load_configuration uses
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiment.layout import SUMMARY_FILE, atomic_write_json, method_label
from experiment.lock import LocksUnsupported, RunDirLocked, hold_run_dir
from experiment.plan import JobFailed, JobSkipped
from experiment.run_dir import holds_started_run, run_status

OUTCOMES = ("completed", "failed", "skipped", "interrupted", "submitted", "running")
SUCCESS = ("completed", "submitted", "running")  # a sweep whose every job ended so exits 0
RUN_STATES = ("completed", "running", "interrupted", "failed", "not started")
# SLURM job states (https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES) after which a run can continue
INTERRUPTING_STATES = ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "REVOKED")


class JobInterrupted(Exception):
    """A sweep job that ended before its run completed (cancelled, timed out, preempted): it continues with
    ``resume=auto``."""


class JobEndedWithoutResult(Exception):
    """A cluster job that ended without reporting back (e.g. OOM-killed): its run directory records what SLURM said."""


# ---------------------------------------------------------------------------------------------------- composing
class SweepComposer:
    """Compose a sweep's job configs; equal to ``config_loader.load_sweep_config(master, overrides)`` for each job."""

    def __init__(self, config_loader: Any, master_config: DictConfig) -> None:
        self.loader, self.master = config_loader, master_config
        self.parser = OverridesParser.create(config_loader=config_loader)
        self._bases: dict[tuple[str, ...], DictConfig] = {}
        self._tasks: dict[tuple[str, ...], tuple[DictConfig, bool]] = {}
        self._groups: dict[str, bool] = {}

    def _is_group(self, override: Override) -> bool:
        if override.is_hydra_override() or override.package is not None:
            return True
        key = override.key_or_group
        if key not in self._groups:
            self._groups[key] = bool(self.loader.repository.group_exists(key))
        return self._groups[key]

    def _split(self, overrides: Sequence[str]) -> tuple[list[Override], list[Override], tuple[str, ...]]:
        """(every override, the value overrides, the group-choice key)."""
        parsed = self.parser.parse_overrides(list(overrides))
        groups = [o for o in parsed if self._is_group(o)]
        return parsed, [o for o in parsed if not self._is_group(o)], tuple(o.input_line for o in groups)

    def _base(self, key: tuple[str, ...]) -> DictConfig:
        if key not in self._bases:
            self._bases[key] = self.loader.load_sweep_config(self.master, list(key))
        return self._bases[key]

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The job's sweep config (with its ``hydra`` node), as Hydra's launchers compose it."""
        parsed, values, key = self._split(overrides)
        cfg = copy.deepcopy(self._base(key))
        if not values:
            return cfg
        with read_write(cfg):
            type(self.loader)._apply_overrides_to_config(values, cfg)
            with open_dict(cfg.hydra):
                app = [o for o in parsed if not o.is_hydra_override()]
                cfg.hydra.overrides.task = [o.input_line for o in app]
                naming = cfg.hydra.job.config.override_dirname
                cfg.hydra.job.override_dirname = get_overrides_dirname(
                    overrides=app, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys
                )
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        return cfg

    def compose_task(self, overrides: Sequence[str], job_num: int = 0) -> dict[str, Any]:
        """The job's own config (no ``hydra`` node), resolved, as a plain dict: what resolving
        ``task_config(compose(overrides))`` gives, but only the job's part is copied per job (the ``hydra`` node
        is composed per job only if the config interpolates it, ``${hydra:...}``)."""
        _, values, key = self._split(overrides)
        if key not in self._tasks:
            task = task_config(self._base(key))
            self._tasks[key] = (task, "${hydra:" in OmegaConf.to_yaml(task))
        task_base, uses_hydra = self._tasks[key]
        task = copy.deepcopy(task_base)
        with read_write(task):
            type(self.loader)._apply_overrides_to_config(values, task)
        OmegaConf.copy_cache(from_config=self.master, to_config=task)
        if uses_hydra:
            from hydra.core.hydra_config import HydraConfig

            sweep = self.compose(overrides)
            with open_dict(sweep):
                sweep.hydra.job.num = sweep.hydra.job.id = job_num
            HydraConfig.instance().set_config(sweep)
        container = OmegaConf.to_container(task, resolve=True)
        assert isinstance(container, dict)
        return container


_COMPOSERS: dict[int, SweepComposer] = {}


def composer_for(config_loader: Any, master_config: DictConfig) -> SweepComposer:
    """One :class:`SweepComposer` per sweep (the sweeper and the launcher share its composed group combinations)."""
    composer = _COMPOSERS.get(id(master_config))
    if composer is None or composer.master is not master_config:
        composer = _COMPOSERS[id(master_config)] = SweepComposer(config_loader, master_config)
    return composer


def task_config(sweep_config: DictConfig) -> DictConfig:
    """The job's own config: the sweep config without its ``hydra`` node."""
    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def has_override(overrides: Sequence[str], key: str) -> bool:
    """Whether a job's overrides set ``key`` (``key=...``, ``+key=...``, ``++key=...``)."""
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


# ---------------------------------------------------------------------------------------------------- outcomes
def job_return(overrides: Sequence[str], cfg: DictConfig | None, outcome: str, value: Any) -> JobReturn:
    """A Hydra ``JobReturn``: ``completed`` (value: the score), ``submitted`` (value: the cluster job id) or an
    error outcome (value: the message), reported as ``FAILED`` with the matching exception."""
    ret = JobReturn(overrides=list(overrides), cfg=cfg, working_dir=str(Path.cwd()))
    if outcome in SUCCESS:
        ret.status, ret.return_value = JobStatus.COMPLETED, value
        ret.task_name = outcome
        return ret
    errors = {"failed": JobFailed, "skipped": JobSkipped, "interrupted": JobInterrupted}
    ret.status = JobStatus.FAILED
    ret.return_value = errors.get(outcome, JobEndedWithoutResult)(value)
    return ret


def job_outcome(ret: JobReturn) -> str:
    """One of :data:`OUTCOMES` for a launcher's ``JobReturn`` (an unknown exception counts as ``failed``)."""
    if ret.status == JobStatus.COMPLETED:
        task_name = getattr(ret, "task_name", None)
        return task_name if task_name in SUCCESS else "completed"
    error = ret._return_value
    if isinstance(error, JobSkipped):
        return "skipped"
    if isinstance(error, JobInterrupted):
        return "interrupted"
    return "failed"


@dataclass
class SweepReport:
    counts: Counter
    problems: list[str]

    @property
    def exit_status(self) -> int:
        """0 when every job completed (or was submitted, or is running in a live job), 1 otherwise."""
        return 0 if all(outcome in SUCCESS for outcome in self.counts.elements()) else 1

    @property
    def line(self) -> str:
        parts = [f"{self.counts[o]} {o}" for o in OUTCOMES if self.counts[o]]
        total = sum(self.counts.values())
        return f"sweep: {total} job(s): {', '.join(parts) if parts else 'none'}"


def sweep_report(returns: Sequence[JobReturn]) -> SweepReport:
    """Count the outcomes of a sweep's jobs; ``problems`` has one line per job that did not complete."""
    counts: Counter = Counter()
    problems = []
    for ret in returns:
        outcome = job_outcome(ret)
        counts[outcome] += 1
        if outcome not in SUCCESS:
            message = str(ret._return_value).splitlines()[0] if str(ret._return_value) else repr(ret._return_value)
            problems.append(f"  {outcome}: {message or ' '.join(ret.overrides or [])}")
    return SweepReport(counts, problems)


def _config_class(config: dict[str, Any]) -> str:
    """A job's config without what distinguishes seeds of one setting (``seed``, ``run_dir``): jobs of one class
    pass or fail the config checks together."""
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", "run_dir")}, sort_keys=True, default=str)


def check_sweep_jobs(configs: Sequence[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    """Check a sweep's job configs on the submit host; ``(index, outcome, value)`` for each job not to submit:
    ``skipped`` (bad input, or a run directory another job of the sweep writes, with the one-line reason),
    ``completed`` (``resume=auto`` on a completed run; value: its score), ``running`` (a live job holds it).

    The whole config is planned (:func:`experiment.plan.plan_run`) once per class of jobs that differ only in
    ``seed`` and ``run_dir`` (the paper's SAC grid: 225 classes of 10 seeds); every job's run directory is checked.
    ``device`` is checked on the node that runs the job, not here (a login node often has no GPU).
    """
    from experiment.plan import RunCompletedError, RunDirUsageError, UsageError, plan_run, resume_checkpoint
    from experiment.run_dir import completed_score

    out: list[tuple[int, str, Any]] = []
    seen: set[str] = set()
    classes: dict[str, str | None] = {}  # class -> why its configs are refused (None: they pass)
    for index, config in enumerate(configs):
        run_dir = Path(str(config["run_dir"]))
        if str(run_dir) in seen:
            out.append((index, "skipped", f"{run_dir}: another job of this sweep writes it; give each job its own run_dir"))
            continue
        seen.add(str(run_dir))
        if is_held(run_dir):
            out.append((index, "running", f"{run_dir}: held by a live job"))
            continue
        cfg = OmegaConf.create({**config, "device": "cpu"})
        try:
            kind = _config_class(config)
            if kind not in classes:
                try:
                    plan_run(cfg)
                    classes[kind] = None
                except RunDirUsageError:  # raised after every config check: the class passes, the run dir decides
                    classes[kind] = None
                except UsageError as error:
                    classes[kind] = str(error)
            if classes[kind] is not None:
                raise UsageError(classes[kind])
            resume_checkpoint(cfg, run_dir)
        except RunCompletedError as error:
            if config["resume"] == "auto":
                out.append((index, "completed", completed_score(run_dir)))
            else:
                out.append((index, "skipped", f"{error}"))
        except UsageError as error:
            out.append((index, "skipped", f"{run_dir}: {error}"))
    return out


# ---------------------------------------------------------------------------------------------------- run states
def _summary(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds ``run_dir``'s lock (it is training there now)."""
    if not run_dir.is_dir():
        return False
    try:
        with hold_run_dir(run_dir):
            return False
    except RunDirLocked:
        return True
    except (LocksUnsupported, OSError):
        return False


def run_state(run_dir: Path) -> str:
    """One of :data:`RUN_STATES`: a run held by a live process is ``running``; a run whose ``summary.json`` still
    says ``running`` but that nobody holds was killed (``interrupted``: it continues from its last checkpoint)."""
    status = run_status(run_dir)
    if status == "completed":
        return "completed"
    if is_held(run_dir):
        return "running"
    if status == "failed":
        return "failed"
    if status is not None or holds_started_run(run_dir) or (run_dir / "checkpoint").exists():
        return "interrupted"
    return "not started"


def record_ended(run_dir: Path, slurm_state: str, job_id: str) -> str | None:
    """Make ``run_dir`` say how its cluster job ended when the run could not (killed without a chance to write):
    ``interrupted`` for :data:`INTERRUPTING_STATES`, else ``failed``. Returns the status written (``None``: the run
    recorded its own end, is held by a live process, or never started)."""
    summary = _summary(run_dir)
    if summary.get("status") in ("completed", "failed", "interrupted") or is_held(run_dir):
        return None
    if not summary and not holds_started_run(run_dir):
        return None
    state = slurm_state.split()[0].upper() if slurm_state else "UNKNOWN"
    status = "interrupted" if state in INTERRUPTING_STATES else "failed"
    summary.update(
        status=status,
        error=f"cluster job {job_id} ended {slurm_state or 'UNKNOWN'} without a result",
        resume_hint="resume=auto continues it from its last checkpoint (python -m sparse_rl.grid resubmit ...)",
    )
    atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return status


def _identity(cfg: DictConfig) -> tuple[str, str, str, str]:
    sparsity = cfg.sparsity
    label = method_label(
        str(sparsity.method), float(sparsity.sparsity), bool(sparsity.wide), sparsity.structure,
        sparsity.get("structure_decay"), sparsity.get("mask_decay"), bool(sparsity.get("sr_ste", False)),
        sparsity.get("ift"),
    )  # fmt: skip
    return str(cfg.agent.name), str(cfg.env.name), label, str(cfg.seed)


def grid_table(cfgs: Sequence[DictConfig]) -> tuple[dict[tuple[str, str, str], Counter], dict[str, list[Path]]]:
    """Per (agent, env, method label) the count of runs in each state; and the run directories per state."""
    table: dict[tuple[str, str, str], Counter] = {}
    by_state: dict[str, list[Path]] = {state: [] for state in RUN_STATES}
    for cfg in cfgs:
        agent, env, label, _ = _identity(cfg)
        run_dir = Path(str(cfg.run_dir))
        state = run_state(run_dir)
        table.setdefault((agent, env, label), Counter())[state] += 1
        by_state[state].append(run_dir)
    return table, by_state


def format_table(table: dict[tuple[str, str, str], Counter]) -> str:
    """The grid's state as a fixed-width table, one row per agent × env × method_sparsity, and a total row."""
    header = ["agent", "env", "method", *RUN_STATES]
    rows = [[*key, *(str(counts[s]) for s in RUN_STATES)] for key, counts in sorted(table.items())]
    total: Counter = sum(table.values(), Counter())
    rows.append(["total", "", "", *(str(total[s]) for s in RUN_STATES)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


# ---------------------------------------------------------------------------------------------------- the command
USAGE = """usage: python -m sparse_rl.grid status|resubmit|drop-checkpoints [OVERRIDES ...]

A grid is the sweep that `python -m sparse_rl.run -m OVERRIDES` runs (e.g. +experiment=paper_dqn_classic
run_root=/scratch/runs); give the same OVERRIDES (hydra.launcher.* settings may be left out for status).
  status     each run directory's state (completed, running, interrupted, failed, not started), counted per
             agent x env x method_sparsity, then a total; reads run directories only (a queued SLURM job that has
             not started yet shows as not started)
  resubmit   runs the sweep again with resume=auto (unless OVERRIDES set resume=): completed runs are left
             untouched, runs held by a live job are not submitted again, the rest continue or start
  drop-checkpoints
             removes the checkpoint of every completed run of the grid (model.zip, logs, evaluations and
             summary.json stay; the analysis and evaluate read only those) and population checkpoints whose
             members are all completed; a completed run cannot be resumed, so nothing else is lost"""
COMMANDS = ("status", "resubmit", "drop-checkpoints")


def sweep_job_configs(overrides: Sequence[str]) -> list[DictConfig]:
    """Every job config of the sweep ``python -m sparse_rl.run -m OVERRIDES`` would run (``hydra.sweeper.params``
    of ``+experiment=`` files included), composed as the sweep composes them."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra

    import experiment.schema  # noqa: F401  (registers run_schema and the method_label resolver)
    from experiment.cli import CONFIG_NAME, CONFIGS_DIR

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    task = [o.input_line for o in parsed if not o.is_hydra_override()]
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        master = compose(config_name=CONFIG_NAME, overrides=fixed, return_hydra_config=True)
        params = [f"{key}={value}" for key, value in (master.hydra.sweeper.params or {}).items()]
        # as BasicSweeper.sweep: the experiment's params, then the command line's (a later value of a key wins)
        jobs = BasicSweeper.split_arguments(parser.parse_overrides([*params, *task]), None)[0]
        composer = SweepComposer(GlobalHydra.instance().config_loader(), master)
        return [OmegaConf.create(composer.compose_task(job, i)) for i, job in enumerate(jobs)]


def drop_checkpoints(cfgs: Sequence[DictConfig]) -> tuple[list[Path], int]:
    """Remove the checkpoints of the grid's completed runs (``model.zip``, logs, ``evaluations.npz`` and
    ``summary.json`` stay: the analysis and ``evaluate`` read only those), and the population checkpoints whose
    every member in the grid is completed. A run a live process holds is left alone. Returns what was removed and
    the bytes freed."""
    import shutil

    from experiment.checkpoint import CHECKPOINT_DIR
    from experiment.population import POPULATION_RECORD, POPULATIONS_DIR

    removed: list[Path] = []
    freed = 0
    populations: dict[Path, bool] = {}  # population folder -> every member seen so far completed

    def remove(folder: Path) -> None:
        nonlocal freed
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
        removed.append(folder)

    for cfg in cfgs:
        run_dir = Path(str(cfg.run_dir))
        completed = run_state(run_dir) == "completed"
        try:
            name = Path(str(json.loads((run_dir / POPULATION_RECORD).read_text())["population_dir"])).name
            folder = Path(str(cfg.run_root)) / POPULATIONS_DIR / name
            populations[folder] = populations.get(folder, True) and completed
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if completed and (run_dir / CHECKPOINT_DIR).is_dir():
            remove(run_dir / CHECKPOINT_DIR)
    for folder, done in populations.items():
        if done and folder.is_dir():
            remove(folder)
    return removed, freed


def main(argv: Sequence[str]) -> int:
    """``python -m sparse_rl.grid status|resubmit OVERRIDES``; see :data:`USAGE`."""
    import os
    import sys

    if not argv or argv[0] not in COMMANDS or any(a in ("-h", "--help") for a in argv):
        print(USAGE, file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, overrides = argv[0], list(argv[1:])
    if command == "resubmit":
        if not has_override(overrides, "resume"):
            overrides.append("resume=auto")
        run = [sys.executable, "-m", "sparse_rl.run", "-m", *overrides]
        print(" ".join(run[1:]), flush=True)
        os.execv(sys.executable, run)
    try:
        cfgs = sweep_job_configs(overrides)
    except Exception as error:  # a bad override: Hydra's one-line message
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    if command == "drop-checkpoints":
        removed, freed = drop_checkpoints(cfgs)
        print(f"removed {len(removed)} checkpoint folder(s) of completed runs, {freed / 1024**3:.2f} GiB")
        return 0
    table, _ = grid_table(cfgs)
    print(format_table(table))
    return 0
