"""Run a named study to completion, incrementally, and write its report (``python -m sparse_rl.study NAME``).

A study is data (``configs/study/<name>.yaml``, :class:`analysis.study.StudyDefinition`). Running it:

1. reads the study's committed table of compact run records (``analysis.study.read_table``);
2. harvests completed runs of the grid found under ``run_root`` into the table;
3. launches the runs the table still lacks as ``python -m sparse_rl.run -m`` sweeps (so any launcher works:
   ``hydra/launcher=local``, ``population``, ``slurm``) with ``resume=auto`` (unfinished run directories are
   continued), harvesting after each sweep so an interrupted study loses no finished run;
4. rewrites the report and its figures from the table alone (``analysis.study.write_report``).
"""

from __future__ import annotations

import difflib
import itertools
import shlex
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from analysis.study import (
    RunKey,
    StudyDefinition,
    StudyError,
    harvest,
    key_of,
    read_table,
    study_from_mapping,
    write_report,
    write_table,
)
from experiment.cli import CONFIGS_DIR
from experiment.layout import DENSE_SPARSITY

REPO_ROOT = CONFIGS_DIR.parent
STUDY_DIR = CONFIGS_DIR / "study"
STUDY_KEYS = ("run_root", "seeds", "table", "report", "figures")  # KEY=VALUE the study itself takes


def available_studies() -> list[str]:
    """The study names under ``configs/study/``."""
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def _repo_path(path: str) -> Path:
    """A study file path: absolute as given, else relative to the repository root."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def load_study(name: str) -> StudyDefinition:
    """The study ``name``; an unknown name is a one-line error naming the closest studies."""
    names = available_studies()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or names
        raise StudyError(f"unknown study {name!r}; choose one of: {', '.join(close)}")
    path = STUDY_DIR / f"{name}.yaml"
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return study_from_mapping(name, data if isinstance(data, dict) else {}, str(path))


def load_paper(study: StudyDefinition) -> dict[str, Any]:
    """The paper's values the study compares with (``configs/paper/*.yaml``)."""
    path = _repo_path(study.paper)
    if not path.is_file():
        raise StudyError(f"{study.name}: paper file {study.paper} not found")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class StudyArgs:
    """The command line of ``sparse_rl.study``: study keys, and the overrides passed on to every sweep."""

    study: StudyDefinition
    forwarded: tuple[str, ...]


def parse_overrides(study: StudyDefinition, overrides: Sequence[str]) -> StudyArgs:
    """Split ``KEY=VALUE`` arguments into the study's own keys and sweep overrides (checked, one-line errors)."""
    changes: dict[str, Any] = {}
    forwarded = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise StudyError(f"expected KEY=VALUE, got {item!r} (study keys: {', '.join(STUDY_KEYS)})")
        if key not in STUDY_KEYS:
            forwarded.append(item)
        elif key == "seeds":
            if not value.isdigit() or int(value) < 1:
                raise StudyError(f"seeds must be a positive integer (the seed count), got {value!r}")
            changes["seeds"] = int(value)
        else:
            changes[key] = value
    return StudyArgs(replace(study, **changes), tuple(forwarded))


def budget_steps(study: StudyDefinition) -> int:
    """The study agent's ``total_timesteps`` (its config's default unless the study overrides it)."""
    for item in study.overrides:
        if item.startswith("agent.total_timesteps="):
            return int(item.partition("=")[2])
    return int(OmegaConf.load(CONFIGS_DIR / "agent" / f"{study.agent}.yaml")["total_timesteps"])


def plan_sweeps(study: StudyDefinition, missing: Sequence[RunKey]) -> list[list[str]]:
    """The ``sparse_rl.run -m`` overrides that train exactly ``missing`` (each sweep a product Hydra can express).

    Runs are grouped by (sparsity, seed list); a group whose (env, method) pairs form a full product is one sweep,
    otherwise one sweep per env. ``resume=auto`` continues an unfinished run directory and starts a fresh one.
    """
    seeds_of: dict[tuple[str, str, float], list[int]] = defaultdict(list)
    for key in sorted(missing):
        seeds_of[(key.env, key.method, key.sparsity)].append(key.seed)
    groups: dict[tuple[float, tuple[int, ...]], list[tuple[str, str]]] = defaultdict(list)
    for (env, method, sparsity), seeds in seeds_of.items():
        groups[(sparsity, tuple(seeds))].append((env, method))
    sweeps = []
    for (sparsity, seeds), pairs in groups.items():
        envs = [e for e in study.envs if any(p[0] == e for p in pairs)]
        methods = [m for m in study.methods if any(p[1] == m for p in pairs)]
        blocks = [(envs, methods)] if set(itertools.product(envs, methods)) == set(pairs) else []
        blocks = blocks or [([e], [m for m in methods if (e, m) in pairs]) for e in envs]
        for block_envs, block_methods in blocks:
            sweep = [f"agent={study.agent}", f"env={','.join(block_envs)}", f"sparsity={','.join(block_methods)}"]
            if sparsity != DENSE_SPARSITY:
                sweep.append(f"sparsity.sparsity={sparsity:g}")
            sweep += [f"seed={','.join(map(str, seeds))}", f"run_root={study.run_root}", "resume=auto"]
            sweeps.append(sweep + list(study.overrides))
    return sweeps


def _collect(study: StudyDefinition, table: Path, records: list[dict[str, Any]], write: bool = True) -> tuple[list[dict], int]:
    """Harvest completed runs under the study's run_root into ``records`` (and the table, if ``write``); return
    the number of unfinished run directories of the grid."""
    found = harvest(study, study.run_root, (key_of(r) for r in records), study.seeds)
    if found.added:
        records = records + found.added
    if found.added and write:
        write_table(table, records)
        print(f"recorded {len(found.added)} completed run(s) in {table}", flush=True)
    return records, len(found.unfinished)


def _missing(study: StudyDefinition, records: Sequence[dict[str, Any]]) -> list[RunKey]:
    """The runs of the study's grid that no record holds."""
    done = {key_of(r) for r in records}
    return [k for k in study.run_keys() if k not in done]


def run_study(
    name: str, overrides: Sequence[str] = (), run: bool = True, dry_run: bool = False, reps: int | None = None
) -> int:
    """Run (or continue) study ``name`` and rewrite its report; the exit code says whether every run is recorded."""
    args = parse_overrides(load_study(name), overrides)
    study = args.study
    paper = load_paper(study)
    table = _repo_path(study.table)
    records = read_table(table)
    records, unfinished = _collect(study, table, records, write=not dry_run)
    missing = _missing(study, records)
    hours = len(missing) * budget_steps(study) / study.steps_per_second / 3600
    planned = len(study.run_keys())
    print(
        f"study {study.name}: {planned} runs ({len(study.cells())} cells x {study.seeds} seeds): "
        f"{planned - len(missing)} recorded, {len(missing)} to run ({unfinished} to continue) "
        f"(~{hours:.1f} process-hours at {study.steps_per_second:g} steps/s)",
        flush=True,
    )
    sweeps = plan_sweeps(study, missing) if run else []
    for number, sweep in enumerate(sweeps, start=1):
        command = [sys.executable, "-m", "sparse_rl.run", "-m", *sweep, *args.forwarded]
        print(f"[sweep {number}/{len(sweeps)}] {shlex.join(command[1:])}", flush=True)
        if dry_run:
            continue
        code = subprocess.call(command)
        records, unfinished = _collect(study, table, records)
        if code != 0:
            print(f"sweep {number} exited with code {code}; going on with the next", flush=True)
    if dry_run:
        return 0
    command = f"python -m sparse_rl.study {name}"
    kwargs = {} if reps is None else {"reps": reps}
    files = write_report(study, records, paper, _repo_path(study.report), _repo_path(study.figures), command, **kwargs)
    print(f"report: {files[-1]} ({len(files) - 1} figure(s) in {_repo_path(study.figures)})", flush=True)
    left = _missing(study, records)
    if left and run:
        print(f"{len(left)} run(s) still missing (failed or interrupted); rerun `{command}` to continue", flush=True)
        return 1
    return 0
