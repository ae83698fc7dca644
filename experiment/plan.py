"""Planning a run: validate a composed config (agent, env, method, budgets, run directory) into a :class:`Plan`.

Nothing is built or written here: bad input is one :class:`UsageError` line before anything exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from agents import AGENTS, AgentSpec
from agents.build import check_agent_config
from agents.diagnostics_callback import diagnostics_settings
from envs import EnvSpec, check_action_space
from experiment.checkpoint import schedule_change
from experiment.layout import EQUAL_PARAMETER_METHOD
from experiment.preflight import budget_warnings
from experiment.run_dir import RunCompleted, RunDirProblem, resume_mode_problem, resume_point
from experiment.schema import core_sparsity_config, normalize_dense
from sparse_rl.config import SPARSE_METHODS, STRUCTURED_METHODS, SparsityConfig


class UsageError(Exception):
    """Bad input: reported as one line, before anything is written."""


class RunDirUsageError(UsageError):
    """The run directory's state does not allow what was asked (see :mod:`experiment.run_dir`)."""


class JobSkipped(Exception):
    """A sweep job that was not run (bad input, a run directory held or refused): its launcher reports it failed."""


class JobFailed(Exception):
    """A sweep job whose training failed (recorded in its ``summary.json``): its launcher reports it failed."""


class RunCompletedError(RunDirUsageError):
    """The run directory holds a completed run, left untouched; with ``resume=auto`` the job is done, not refused."""


@dataclass
class Plan:
    """A validated run: everything needed to build it, nothing built yet."""

    cfg: DictConfig
    agent: AgentSpec
    env: EnvSpec
    sparsity: SparsityConfig
    run_dir: Path
    checkpoint: Path | None
    variant: str | None  # dense_matched or wide: hidden widths solved for equal parameters
    warnings: list[str] = field(default_factory=list)  # said before training starts (experiment.preflight)

    @property
    def method(self) -> str:
        """The method as the user named it (``dense_matched`` trains with the core's ``dense``)."""
        return str(self.cfg.sparsity.method)

    @property
    def group_sparsity(self) -> dict[str, float]:
        return {group: self.sparsity.sparsity_of(group) for group in self.agent.group_names}


def _positive(name: str, value: int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")


def _check_counts(cfg: DictConfig) -> None:
    """Budgets, cadences and thread counts are positive (``checkpoint_freq`` may be 0: only at the end)."""
    _positive("agent.total_timesteps", cfg.agent.total_timesteps)
    _positive("agent.n_envs", cfg.agent.n_envs)
    _positive("agent.eval_freq", cfg.agent.eval_freq)
    _positive("agent.eval_episodes", cfg.agent.eval_episodes)
    _positive("checkpoint_freq", cfg.checkpoint_freq, allow_zero=True)
    _positive("torch_threads", cfg.torch_threads)
    _positive("nan_check_freq", cfg.nan_check_freq)


def plan_run(cfg: DictConfig, check_run_dir: bool = True) -> Plan:
    """Validate the whole config (agent, env, method, budgets, run directory); writes nothing.

    A ``dense`` run's ``sparsity.sparsity`` is set to 0 (what it trains), with a warning if it was not.
    ``check_run_dir=False`` skips the run directory's state (a saved run's config, rebuilt to evaluate it).
    """
    dense_note = normalize_dense(cfg)
    _check_structure_method(cfg)
    try:
        agent = AGENTS.get(cfg.agent.name)
        env = EnvSpec.from_config(cfg.env)
        check_action_space(env, agent.action_spaces, agent.name)
        sparsity = core_sparsity_config(cfg.sparsity)
        sparsity.validate()
    except (KeyError, ValueError) as error:
        raise UsageError(error.args[0] if error.args else str(error)) from error
    groups = agent.group_names
    for group in sparsity.group_sparsity:
        if group not in groups:
            raise UsageError(f"sparsity.{group} is not a group of agent '{agent.name}'; its groups: {', '.join(groups)}")
    method = cfg.sparsity.method
    if sparsity.group_sparsity and method == "dense":
        raise UsageError(
            "per-group sparsity overrides need a sparse method; valid choices: "
            f"{', '.join([*SPARSE_METHODS, EQUAL_PARAMETER_METHOD])}"
        )
    variant = EQUAL_PARAMETER_METHOD if method == EQUAL_PARAMETER_METHOD else ("wide" if cfg.sparsity.wide else None)
    if cfg.sparsity.wide and sparsity.method == "dense":
        raise UsageError(
            f"sparsity.wide=true widens a sparse network; method '{method}' is dense (use {', '.join(SPARSE_METHODS)})"
        )
    if variant is not None and env.family == "atari":
        raise UsageError(f"{variant} solves MLP widths; '{env.name}' has image observations (CNN policy), not supported yet")
    _check_counts(cfg)
    if (problem := resume_mode_problem(cfg.resume)) is not None:
        raise UsageError(problem)
    try:
        check_agent_config(cfg.agent)
        diagnostics_settings(cfg.diagnostics)
    except ValueError as error:
        raise UsageError(error.args[0]) from error
    run_dir = Path(cfg.run_dir)
    warnings = [dense_note] if dense_note else []
    warnings += budget_warnings(cfg)
    checkpoint = resume_checkpoint(cfg, run_dir) if check_run_dir else None
    return Plan(cfg, agent, env, sparsity, run_dir, checkpoint, variant, warnings)


def _check_structure_method(cfg: DictConfig) -> None:
    """``sparsity.structure`` (N:M) masks a sparse network of the configured widths: not dense, dense_matched, wide."""
    structure = cfg.sparsity.structure
    if structure is None:
        return
    if cfg.sparsity.method not in STRUCTURED_METHODS or cfg.sparsity.wide:
        what = "sparsity.wide=true" if cfg.sparsity.wide else f"sparsity={cfg.sparsity.method}"
        raise UsageError(
            f"sparsity.structure={structure} does not combine with {what}; valid methods: {', '.join(STRUCTURED_METHODS)}"
        )


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """:func:`experiment.run_dir.resume_point` with its refusal as a :class:`UsageError`."""
    try:
        checkpoint = resume_point(cfg, run_dir)
    except RunCompleted as error:
        raise RunCompletedError(str(error)) from None
    except RunDirProblem as error:
        raise RunDirUsageError(str(error)) from None
    if checkpoint is not None and not cfg.resume_schedule_change and (change := schedule_change(run_dir, cfg)) is not None:
        raise UsageError(change)
    return checkpoint
