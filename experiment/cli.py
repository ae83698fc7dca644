"""Command-line help and override checks of ``python -m sparse_rl.run`` (Hydra, no SB3, no gymnasium).

- :func:`help_groups`: the config groups a user picks (``agent``, ``env`` with ``dmc/cheetah-run``-style names,
  ``sparsity``, ``+experiment``, ``hydra/launcher``), read from ``configs/``; ``--help`` shows it through the
  OmegaConf resolver ``help_groups``. The internal groups ``agent_env`` and ``agent_sparsity`` are not listed:
  they are chosen from ``agent``, ``env`` and ``sparsity``.
- :func:`override_problem`: a misspelled key (``sparsity.sparsty=0.9``) gets one line naming the closest valid
  keys, instead of Hydra's advice to add it with ``+``; an unknown group option (``env=cartpole``, ``agent=DQN``)
  one line naming the closest valid choices (case-insensitive; ``dmc/``, ``minatar/``, ``atari/`` envs included); a
  value of the wrong type (``sparsity.sparsity=abc``, in any value of a sweep) one line.
- :func:`argv_problem`: the above, then the composed jobs checked as the training paths will check them
  (:func:`experiment.plan.plan_run` without the run directory's state; ``device`` and the population engine's
  ``hydra.launcher.device`` unless a cluster node runs the job; whether ``run_root`` can be written), all before
  Hydra creates a folder. A sweep is refused only if every job is (otherwise each bad job is skipped with one line,
  as before); jobs the population engine cannot train are its launcher's to skip and count.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, Transformer
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

import experiment.schema  # noqa: F401  (registers run_schema and the method_label resolver that compose needs)

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAME = "config"
HELP_WIDTH = 110
# (how a user writes the group, its folder under configs/, what it is for)
USER_GROUPS = (
    ("agent", "agent", "the RL algorithm"),
    ("env", "env", "the environment; dm-control, MinAtar and Atari as env=dmc/cheetah-run, env=minatar/breakout, ..."),
    ("sparsity", "sparsity", "the training method"),
    ("+experiment", "experiment", "a stored sweep of the paper's grid, with -m"),
    ("hydra/launcher", "hydra/launcher", "how -m runs the jobs: local (parallel processes) or slurm"),
)
OPEN_DICTS = ("agent.sb3.", "env.kwargs.")  # take any key: SB3 constructor kwargs, env kwargs
CLOSEST = 3  # closest valid keys named in an error
CHOICE_CUTOFF = 0.6  # difflib similarity for a "closest valid choice" (as for keys)
LIST_ALL_AT_MOST = 12  # a group with more options is named by its closest ones (--help lists them all)
POPULATION_LAUNCHER = "hydra_plugins.sparse_rl_population.population_launcher.PopulationLauncher"
_PREFIX = {OverrideType.CHANGE: "", OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}


def group_options(folder: str, configs_dir: Path = CONFIGS_DIR) -> list[str]:
    """The options of a config group: YAML names under ``configs_dir/folder``, subfolders as ``dmc/cheetah-run``."""
    root = configs_dir / folder
    names = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")]
    return sorted(names, key=lambda name: (name.count("/"), name.split("/")[0] if "/" in name else "", name.lower()))


def help_groups(configs_dir: Path = CONFIGS_DIR) -> str:
    """The ``Config groups`` block of ``--help``: each user-facing group, its purpose and its options."""
    blocks = []
    for written, folder, purpose in USER_GROUPS:
        options = group_options(folder, configs_dir)
        blocks.append(f"  {written}: {purpose}")
        blocks += textwrap.wrap(", ".join(options), HELP_WIDTH, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(blocks)


OmegaConf.register_new_resolver("help_groups", lambda: help_groups(), replace=True)


def _composable(override: Override) -> str | None:
    """``override`` as one composable override (a sweep's first value); ``None`` for Hydra's own settings."""
    if override.is_hydra_override():
        return None
    if not override.is_sweep_override():
        return override.input_line
    first = next(iter(override.sweep_iterator(transformer=Transformer.encode)), None)
    return None if first is None else f"{_PREFIX[override.type]}{override.get_key_element()}={first}"


def config_keys(cfg: DictConfig) -> list[str]:
    """Every key path of ``cfg`` (inner nodes too), e.g. ``sparsity``, ``sparsity.sparsity``, ``agent.sb3.gamma``."""
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.append(f"{prefix}{key}")
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def unknown_key_message(key: str, cfg: DictConfig) -> str:
    """One line for an override of ``key``, which ``cfg`` does not have, naming the closest valid keys.

    Keys are matched among the siblings of ``key`` (same parent) when the parent exists, else among all keys.
    """
    keys = config_keys(cfg)
    parent, _, name = key.rpartition(".")
    if parent in keys:
        siblings = [k for k in keys if k.rpartition(".")[0] == parent]
        names = difflib.get_close_matches(name, [k.rpartition(".")[2] for k in siblings], n=CLOSEST, cutoff=0.6)
        close = [f"{parent}.{n}" for n in names]
        message = f"unknown key '{key}'; " + (
            f"closest valid keys: {', '.join(close)}" if close else f"valid keys under {parent}: {', '.join(siblings)}"
        )
    else:
        close = difflib.get_close_matches(key, keys, n=CLOSEST, cutoff=0.6)
        top = [k for k in keys if "." not in k]
        message = f"unknown key '{key}'; " + (
            f"closest valid keys: {', '.join(close)}" if close else f"valid top-level keys: {', '.join(top)}"
        )
    if key.startswith(OPEN_DICTS):
        message += f" (to pass a new argument there, write +{key}=VALUE)"
    return message


def _first_line(error: BaseException) -> str:
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else None
    return str(cause or error).strip().splitlines()[0]


def closest_choices(value: str, options: Sequence[str]) -> list[str]:
    """Options ``value`` may have meant: equal ignoring case first, then the closest by spelling, comparing
    lowercased names whole and by their last part (``cheetah-run`` finds ``dmc/cheetah-run``)."""
    lowered = value.lower()
    exact = [o for o in options if o.lower() == lowered or o.lower().rpartition("/")[2] == lowered]

    def score(option: str) -> float:
        whole = difflib.SequenceMatcher(None, lowered, option.lower()).ratio()
        return max(whole, difflib.SequenceMatcher(None, lowered, option.lower().rpartition("/")[2]).ratio())

    near = sorted((o for o in options if o not in exact and score(o) >= CHOICE_CUTOFF), key=lambda o: -score(o))
    return [*exact, *near][:CLOSEST]


def choice_message(group: str, value: str, options: Sequence[str]) -> str:
    """One line for an unknown option of a config group, naming the closest valid choices."""
    close = closest_choices(value, options)
    if close:
        return f"unknown {group} '{value}'; closest valid choices: {', '.join(close)}"
    if len(options) <= LIST_ALL_AT_MOST:
        return f"unknown {group} '{value}'; valid choices: {', '.join(options)}"
    top = [o for o in options if "/" not in o]
    folders = sorted({o.split("/")[0] for o in options if "/" in o})
    return (
        f"unknown {group} '{value}'; valid choices: {', '.join(top)}, "
        f"{', '.join(f'{f}/...' for f in folders)} (python -m sparse_rl.run --help lists them all)"
    )


def _group_options(written: str, folder: str, configs_dir: Path) -> list[str]:
    """Our config files of a group, plus what Hydra's plugins add to it (``hydra/launcher=submitit_local``)."""
    options = group_options(folder, configs_dir)
    return options + [o for o in GlobalHydra.instance().config_loader().get_group_options(folder) if o not in options]


def _choice_problem(parsed: Sequence[Override], configs_dir: Path) -> str | None:
    """One line for the first value (of any sweep) that is not an option of its user-facing group."""
    groups = {written.lstrip("+"): (written, folder) for written, folder, _ in USER_GROUPS}
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if key not in groups or override.type == OverrideType.DEL:
            continue
        written, folder = groups[key]
        options = _group_options(written, folder, configs_dir)
        values = (
            override.sweep_iterator(transformer=Transformer.encode) if override.is_sweep_override() else [override.value()]
        )
        for value in values:
            if str(value) not in options:
                return choice_message(written.lstrip("+"), str(value), options)
    return None


def _sweep_value_problem(parsed: Sequence[Override], cfg: DictConfig) -> str | None:
    """One line for a swept value (past the first, which was composed) that the config's schema cannot take."""
    for override in parsed:
        if not override.is_sweep_override() or override.is_hydra_override() or override.type != OverrideType.CHANGE:
            continue
        key = override.get_key_element()
        if OmegaConf.select(cfg, key, default=None) is None or isinstance(OmegaConf.select(cfg, key), DictConfig):
            continue  # a group (checked by _choice_problem) or a key without a typed value
        for value in list(override.sweep_iterator())[1:]:
            trial = cfg.copy()
            try:
                OmegaConf.update(trial, key, value, merge=True)
            except OmegaConfBaseException as error:
                return f"{key}={value}: {str(error).strip().splitlines()[0]}"
    return None


def compose_problem(overrides: Sequence[str], configs_dir: Path = CONFIGS_DIR) -> tuple[str | None, DictConfig | None]:
    """Compose the first job of ``overrides`` (a sweep's first values) as Hydra will: one line for what would
    stop Hydra (unknown key, unknown group option, a value of the wrong type, bad syntax), else the config."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        return f"cannot read the overrides: {_first_line(error)}", None
    remaining = [line for line in map(_composable, parsed) if line is not None]
    unknown = []
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        if (problem := _choice_problem(parsed, configs_dir)) is not None:
            return problem, None
        for _ in range(len(remaining) + 1):
            try:
                cfg = compose(config_name=CONFIG_NAME, overrides=remaining)
                break
            except ConfigCompositionException as error:
                bad = next((o for o in remaining if str(error).startswith(f"Could not override '{_key(o)}'.")), None)
                if bad is None:
                    return (None if unknown else _composition_line(error)), None
                unknown.append(_key(bad))
                remaining.remove(bad)
        else:
            return None, None
    if unknown:
        return "; ".join(unknown_key_message(key, cfg) for key in unknown), None
    return _sweep_value_problem(parsed, cfg), cfg


def _composition_line(error: ConfigCompositionException) -> str:
    """Hydra's message in one line: ``Error merging override sparsity.sparsity=abc`` + its cause's first line."""
    head = str(error).strip().splitlines()[0]
    if head.startswith("Error merging override "):
        return f"{head.removeprefix('Error merging override ')}: {_first_line(error)}"
    return head


def override_problem(overrides: Sequence[str], configs_dir: Path = CONFIGS_DIR) -> str | None:
    """One line if Hydra could not compose ``overrides`` (:func:`compose_problem`), else ``None``."""
    return compose_problem(overrides, configs_dir)[0]


def _is_population(cfg: DictConfig) -> bool:
    return str(cfg.hydra.launcher.get("_target_")) == POPULATION_LAUNCHER


def _on_cluster(cfg: DictConfig) -> bool:
    """Whether the sweep's jobs run on cluster nodes (``hydra/launcher=slurm``, or the population launcher with
    ``slurm`` settings): the node checks ``device`` itself; a login node often has no GPU (docs/design.md 38)."""
    launcher = cfg.hydra.launcher
    return str(launcher.get("_target_")).endswith("GridSlurmLauncher") or (
        _is_population(cfg) and launcher.get("slurm") is not None
    )


def _job_problem(cfg: DictConfig) -> str | None:
    """One line if a composed job (its ``hydra`` node included) would be refused before it trains, else ``None``.

    Whether the population engine can train the job is left to its launcher (it skips such jobs one line each and
    the sweep's summary counts them); ``device`` is checked by the node on a cluster (:func:`_on_cluster`).
    """
    from experiment.plan import UsageError, device_problem, output_problem, plan_run

    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    try:
        plan_run(job, check_run_dir=False)
    except UsageError as error:
        return str(error)
    return (None if _on_cluster(cfg) else device_problem(str(job.device))) or output_problem(job)


def jobs_problem(overrides: Sequence[str], multirun: bool, configs_dir: Path = CONFIGS_DIR) -> str | None:
    """One line if the command's job (a sweep: every one of its jobs) would be refused, else ``None``.

    The launcher's settings are checked once (``hydra.launcher.device`` of the population engine); a sweep's jobs
    are composed in order until one passes (Hydra composes each of them anyway): one that passes lets the sweep
    start, and its bad jobs are skipped with one line each as they come.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from experiment.plan import device_problem

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    hydra_lines = [o.input_line for o in parsed if o.is_hydra_override()]
    task = [o for o in parsed if not o.is_hydra_override()]
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        first = compose(config_name=CONFIG_NAME, overrides=[*map(_composable, task), *hydra_lines], return_hydra_config=True)
        population_device = _is_population(first) and not _on_cluster(first)
        if population_device and (problem := device_problem(str(first.hydra.launcher.device), "hydra.launcher.device")):
            return problem
        if not multirun:
            return _job_problem(first)
        params = [f"{k}={v}" for k, v in (first.hydra.sweeper.get("params") or {}).items()]  # as BasicSweeper does
        jobs = BasicSweeper.split_arguments(parser.parse_overrides([*params, *(o.input_line for o in task)]), None)[0]
        problems = []
        for job in jobs:
            cfg = compose(config_name=CONFIG_NAME, overrides=[*job, *hydra_lines], return_hydra_config=True)
            if (problem := _job_problem(cfg)) is None:
                return None
            problems.append(problem)
    if len(problems) == 1:
        return problems[0]
    if all(p == problems[0] for p in problems):
        return f"{problems[0]} (each of the sweep's {len(problems)} jobs)"
    return f"every one of the sweep's {len(problems)} jobs is refused; the first: {problems[0]}"


def argv_problem(argv: Sequence[str]) -> str | None:
    """:func:`override_problem`, then :func:`jobs_problem`, for a command line (Hydra's flags parsed as Hydra does);
    ``None`` for help requests and ``--cfg``-style inspection."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir or args.config_name:
        return None
    if (problem := override_problem(args.overrides)) is not None or args.cfg:
        return problem
    return jobs_problem(args.overrides, multirun=args.multirun)


def _key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")
