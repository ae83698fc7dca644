"""Command-line help and override checks of ``python -m sparse_rl.run`` (Hydra, no SB3, no gymnasium).

- :func:`help_groups`: the config groups a user picks (``agent``, ``env`` with ``dmc/cheetah-run``-style names,
  ``sparsity``, ``+experiment``, ``hydra/launcher``), read from ``configs/``; ``--help`` shows it through the
  OmegaConf resolver ``help_groups``. The internal groups ``agent_env`` and ``agent_sparsity`` are not listed:
  they are chosen from ``agent``, ``env`` and ``sparsity``.
- :func:`override_problem`: a misspelled key (``sparsity.sparsty=0.9``) gets one line naming the closest valid
  keys, instead of Hydra's advice to add it with ``+``.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, Transformer
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf

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


def override_problem(overrides: Sequence[str], configs_dir: Path = CONFIGS_DIR) -> str | None:
    """One line if an override names a key the composed config lacks (with the closest valid keys), else ``None``.

    Every other problem (unknown group option, bad value, bad syntax) is left to Hydra, whose messages for
    those are clear; so is anything this check cannot compose.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return None
    remaining = [line for line in map(_composable, parsed) if line is not None]
    unknown = []
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        for _ in range(len(remaining) + 1):
            try:
                cfg = compose(config_name=CONFIG_NAME, overrides=remaining)
                break
            except ConfigCompositionException as error:
                bad = next((o for o in remaining if str(error).startswith(f"Could not override '{_key(o)}'.")), None)
                if bad is None:
                    return None
                unknown.append(_key(bad))
                remaining.remove(bad)
        else:
            return None
    return "; ".join(unknown_key_message(key, cfg) for key in unknown) if unknown else None


def argv_problem(argv: Sequence[str]) -> str | None:
    """:func:`override_problem` for a command line (Hydra's flags parsed as Hydra does); ``None`` for help requests."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_dir or args.config_name:
        return None
    return override_problem(args.overrides)


def _key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")
