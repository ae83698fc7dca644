"""Planning a run: validate a composed config (agent, env, method, budgets, run directory) into a :class:`Plan`.

Nothing is built or written here: bad input is one :class:`UsageError` line before anything exists.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from agents import AGENTS, AgentSpec
from agents.build import check_agent_config
from agents.diagnostics_callback import diagnostics_settings
from agents.rules import Range
from envs import EnvSpec, check_action_space
from experiment.checkpoint import schedule_change
from experiment.layout import EQUAL_PARAMETER_METHOD
from experiment.preflight import budget_warnings
from experiment.run_dir import RunCompleted, RunDirProblem, resume_mode_problem, resume_point
from experiment.schema import core_sparsity_config, normalize_dense
from sparse_rl.config import SPARSE_METHODS, STRUCTURED_METHODS, SparsityConfig
from sparse_rl.ift import IFT_TRANSFORMS


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


# the run's own numbers (configs/config.yaml); the agent node's are agents.rules' (checked by check_agent_config)
RUN_RULES: dict[str, Range] = {
    "seed": Range(low=0, high=2**32 - 1, integer=True),  # numpy's SeedSequence range, which SB3 seeds from
    "checkpoint_freq": Range(low=0, integer=True, why="(0: only at the end)"),
    "torch_threads": Range(low=1, integer=True),
    "nan_check_freq": Range(low=1, integer=True),
}


def _check_counts(cfg: DictConfig) -> None:
    """The run's numbers against :data:`RUN_RULES` (the agent node's: :func:`agents.build.check_agent_config`)."""
    for key, rule in RUN_RULES.items():
        if (problem := rule.problem(key, cfg[key])) is not None:
            raise UsageError(problem)


def device_problem(device: str, key: str = "device") -> str | None:
    """One line if torch cannot use ``device`` here (``cuda`` without CUDA, a GPU index it lacks), else ``None``.

    Checked before anything is created: SB3 would otherwise fall back to the CPU without a word.
    """
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        return f"{key}={device} is not a torch device; valid choices: cpu, cuda, cuda:N"
    if parsed.type == "cpu":
        return None
    if parsed.type != "cuda":
        return f"{key}={device} is not supported; valid choices: cpu, cuda, cuda:N"
    if not torch.cuda.is_available():
        return f"{key}={device} but CUDA is not available on this machine (torch {torch.__version__}); use {key}=cpu"
    if parsed.index is not None and parsed.index >= (count := torch.cuda.device_count()):
        return f"{key}={device} but this machine has {count} CUDA device(s); use cuda:0 to cuda:{count - 1}"
    return None


def unusable_dir_problem(path: str | Path, key: str) -> str | None:
    """One line if a run cannot create or write ``path`` (a file on the way, a read-only folder or file system).

    Tried, not inferred from permission bits (root passes ``os.access`` on read-only folders): a temporary folder is
    made and removed in the deepest existing folder on the way; nothing is left behind.
    """
    target = Path(path).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        return f"{key}={path}: {existing} is a file, not a folder; choose another {key}"
    try:
        tempfile.TemporaryDirectory(prefix=".sparse_rl_probe_", dir=existing).cleanup()
    except OSError as error:
        return f"{key}={path}: cannot write in {existing} ({error.strerror or error}); choose another {key}"
    return None


def output_problem(cfg: DictConfig) -> str | None:
    """:func:`unusable_dir_problem` of ``run_root`` (what a user sets), then of ``run_dir`` (it may lie elsewhere)."""
    return unusable_dir_problem(cfg.run_root, "run_root") or unusable_dir_problem(cfg.run_dir, "run_dir")


def plan_run(cfg: DictConfig, check_run_dir: bool = True) -> Plan:
    """Validate the whole config (agent, env, method, budgets, run directory); writes nothing.

    A ``dense`` run's ``sparsity.sparsity`` is set to 0 (what it trains), with a warning if it was not.
    ``check_run_dir=False`` skips what concerns training here: the run directory's state and whether it can be
    written, and ``device`` (a saved run's config, rebuilt to evaluate it).
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
    if (problem := ift_problem(cfg, agent, env)) is not None:
        raise UsageError(problem)
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
    if check_run_dir and (problem := device_problem(str(cfg.device)) or output_problem(cfg)) is not None:
        raise UsageError(problem)
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


def ift_problem(cfg: DictConfig, agent: AgentSpec, env: EnvSpec) -> str | None:
    """One line if ``sparsity.ift`` (Sparse Parallel, Factorized, Doped: :mod:`sparse_rl.ift`) cannot apply, else None:
    a known kind, a sparse method (its sparsity parameterises the transformation), one Sparse-IFT transformation at a
    time (not with ``sparsity.wide``), no N:M structure (each sub-layer keeps a fixed active count), an agent whose
    policies build their MLPs with SB3's builders (``AgentSpec.sparse_ift``) and vector observations."""
    kind = cfg.sparsity.get("ift")
    if kind is None:
        return None
    if kind not in IFT_TRANSFORMS:
        return f"unknown sparsity.ift '{kind}'; valid choices: {', '.join(sorted(IFT_TRANSFORMS))}, null"
    method = cfg.sparsity.method
    if method not in SPARSE_METHODS:
        methods = ", ".join(SPARSE_METHODS)
        return f"sparsity.ift={kind} transforms a sparse network's layers; method '{method}' is dense (use {methods})"
    if cfg.sparsity.wide:
        return f"sparsity.ift={kind} and sparsity.wide=true are two Sparse-IFT transformations; choose one"
    if cfg.sparsity.structure is not None:
        return (
            f"sparsity.ift={kind} does not combine with sparsity.structure={cfg.sparsity.structure} (each transformed "
            "sub-layer keeps a fixed active count); use sparsity.structure=null"
        )
    if not agent.sparse_ift:
        users = ", ".join(name for name, spec in AGENTS.items() if spec.sparse_ift)
        return f"sparsity.ift applies to the agents {users} (SB3's actor, critic and Q builders), not '{agent.name}'"
    if env.family == "atari":
        return f"sparsity.ift transforms MLP layers; '{env.name}' has image observations (CNN policy), not supported yet"
    return None


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
