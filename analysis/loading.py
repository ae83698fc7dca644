"""Loading run directories into :class:`RunRecord` s, reporting (never raising on) broken runs."""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

from analysis.discovery import find_run_dirs
from analysis.records import RunRecord
from experiment.layout import (
    DENSE_METHOD,
    DENSE_SPARSITY,
    EVALUATIONS_FILE,
    HYDRA_CONFIG,
    SUMMARY_FILE,
    ift_tag,
    last_fraction_mean,
    recipe_tag,
    structure_tag,
)

PROGRESS_MIN_RUNS = 20  # show a progress bar from this many run directories on
SPARSITY_DECIMALS = 6  # sparsities are rounded so 0.9 from YAML and 0.9000000001 from arithmetic agree
SCORE_RTOL = 1e-6  # summary.json's score may differ from ours by float noise only
MAX_ERROR_CHARS = 160  # exception text kept in an issue (one line)

WIDE_KEY, WIDE_SUFFIX = "sparsity.wide", "_wide"
IFT_KEY = "sparsity.ift"  # Sparse Parallel/Factorized/Doped runs are their own method: rigl_doped (ift_tag)
STRUCTURE_KEY = "sparsity.structure"  # N:M runs are their own method: rigl_2of4 (structure_tag)
RECIPE_KEYS = ("structure_decay", "mask_decay", "sr_ste")  # and N:M recipes: prune_1of8_sparsify (recipe_tag)

# (record attribute, config key, summary.json key)
IDENTITY_KEYS = (
    ("agent", "agent.name", "agent"),
    ("env", "env.name", "env"),
    ("method", "sparsity.method", "method"),
    ("sparsity", "sparsity.sparsity", "sparsity"),
    ("seed", "seed", "seed"),
)


def _describe(exc: BaseException) -> str:
    """An exception as one short line."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _read_config(run: RunRecord) -> dict[str, Any]:
    try:
        cfg = OmegaConf.load(run.path / HYDRA_CONFIG)
    except Exception as exc:  # any parse error is a reportable problem, not a crash
        run.add("note", f".hydra/config.yaml unreadable ({_describe(exc)})")
        return {}
    values = {}
    for attr, key, _ in IDENTITY_KEYS:
        try:
            values[attr] = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        except Exception:
            values[attr] = None
    if values.get("method") is not None and OmegaConf.select(cfg, WIDE_KEY, default=False):
        values["method"] = f"{values['method']}{WIDE_SUFFIX}"  # Sparse Wide is its own method in every table
    if values.get("method") is not None:
        values["method"] += ift_tag(OmegaConf.select(cfg, IFT_KEY, default=None))
        values["method"] = f"{values['method']}{structure_tag(OmegaConf.select(cfg, STRUCTURE_KEY, default=None))}"
        recipe = {key: OmegaConf.select(cfg, f"sparsity.{key}", default=None) for key in RECIPE_KEYS}
        values["method"] += recipe_tag(**recipe)  # an N:M recipe is its own method (decision 33)
    return values


def _read_summary(run: RunRecord) -> dict[str, Any] | None:
    path = run.path / SUMMARY_FILE
    if not path.is_file():
        run.status = "missing"
        run.add("incomplete", "summary.json missing (still running or crashed)")
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        run.add("incomplete", f"summary.json unreadable ({_describe(exc)})")
        return None
    run.status = str(summary.get("status", "unknown"))
    if run.status == "failed":
        run.add("broken", "status 'failed'")
    elif run.status != "completed":
        run.add("incomplete", f"status '{run.status}'")
    checks = summary.get("checks")
    if isinstance(checks, dict) and checks.get("final_allocation") == "failed":
        reached = summary.get("sparsity_reached")
        run.add("incomplete", f"did not reach its final sparsity allocation (sparsity reached {reached})")
    score = summary.get("score")
    run.summary_score = float(score) if isinstance(score, (int, float)) else None
    params = summary.get("params")
    active = params.get("active_with_bias") if isinstance(params, dict) else None
    if isinstance(active, int) and not isinstance(active, bool):
        run.active_params = active
    else:
        run.add("note", "summary.json has no params.active_with_bias")
    return summary


def _coerce(attr: str, value: Any) -> Any:
    if value is None:
        return None
    if attr == "sparsity":
        return round(float(value), SPARSITY_DECIMALS)
    if attr == "seed":
        return int(value)
    return str(value)


def _identify(run: RunRecord, config: dict[str, Any], summary: dict[str, Any] | None) -> None:
    for attr, key, summary_key in IDENTITY_KEYS:
        from_summary = summary.get(summary_key) if summary else None
        try:
            if attr == "method" and summary and summary.get("wide") and from_summary is not None:
                from_summary = f"{from_summary}{WIDE_SUFFIX}"
            if attr == "method" and summary and from_summary is not None:
                recipe = summary.get("nm_recipe") if isinstance(summary.get("nm_recipe"), dict) else {}
                tags = ift_tag(summary.get("ift")) + structure_tag(summary.get("structure"))
                tags += recipe_tag(**{k: recipe.get(k) for k in RECIPE_KEYS})
                from_summary = f"{from_summary}{tags}"
            ours, theirs = _coerce(attr, config.get(attr)), _coerce(attr, from_summary)
        except (TypeError, ValueError) as exc:
            run.add("broken", f"bad {key} ({exc})")
            continue
        if ours is not None and theirs is not None and ours != theirs:
            run.add("note", f"{key}={ours!r} in config but {theirs!r} in summary.json (using the config)")
        setattr(run, attr, ours if ours is not None else theirs)
    if run.method == DENSE_METHOD and run.sparsity != DENSE_SPARSITY:  # a dense network has no sparsity
        if run.sparsity is not None:
            run.add("note", f"dense run recorded with sparsity {run.sparsity:g}; it trained dense (using {DENSE_SPARSITY})")
        run.sparsity = DENSE_SPARSITY
    missing = [key for attr, key, _ in IDENTITY_KEYS if getattr(run, attr) is None]
    if missing:
        run.add("broken", f"cannot identify run: no {', '.join(missing)} in config or summary.json")


def _read_evaluations(run: RunRecord) -> None:
    path = run.path / EVALUATIONS_FILE
    if not path.is_file():
        run.add("broken", "evaluations.npz missing")
        return
    try:
        with np.load(path, allow_pickle=False) as data:
            timesteps = np.asarray(data["timesteps"]).reshape(-1)
            results = np.asarray(data["results"], dtype=float)
    except Exception as exc:  # truncated/corrupt files raise many different errors
        run.add("broken", f"evaluations.npz unreadable ({_describe(exc)})")
        return
    if results.ndim == 1:
        results = results[:, None]
    if results.ndim != 2 or results.shape[0] != len(timesteps):
        run.add("broken", f"evaluations.npz shapes disagree: timesteps {timesteps.shape}, results {results.shape}")
        return
    if len(timesteps) == 0 or results.shape[1] == 0:
        run.add("broken", "evaluations.npz holds no evaluations")
        return
    returns = results.mean(axis=1)  # eval episodes are averaged first; seeds are rliable's run axis
    if not np.all(np.isfinite(returns)):
        run.add("broken", "evaluations.npz holds non-finite returns")
        return
    run.timesteps, run.returns = timesteps.astype(np.int64), returns
    run.score = last_fraction_mean(returns)
    if run.summary_score is not None and not math.isclose(
        run.score, run.summary_score, rel_tol=SCORE_RTOL, abs_tol=SCORE_RTOL
    ):
        run.add("note", f"summary.json score {run.summary_score:.6g} differs from recomputed {run.score:.6g} (using ours)")


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Load one run directory; problems become issues on the record, never exceptions."""
    run = RunRecord(path=Path(path))
    config = _read_config(run)
    summary = _read_summary(run)
    _identify(run, config, summary)
    _read_evaluations(run)
    return run


def _flag_duplicates(runs: Sequence[RunRecord]) -> None:
    first: dict[tuple, RunRecord] = {}
    for run in runs:
        if not run.identified:
            continue
        key = (run.agent, run.env, run.method, run.sparsity, run.seed)
        if key in first:
            run.add("broken", f"duplicate of {first[key].path} (same agent, env, method, sparsity, seed)")
        else:
            first[key] = run


def _flag_short_runs(runs: Sequence[RunRecord]) -> None:
    """A completed run whose last evaluation comes before other completed runs' of its agent/env fell short."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for run in runs:
        if run.usable_for_scores:
            groups[(run.agent, run.env)].append(run)
    for group in groups.values():
        longest = max(int(run.timesteps[-1]) for run in group)
        for run in group:
            last = int(run.timesteps[-1])
            if last < longest:
                run.add("incomplete", f"fewer evaluations than peers: last at step {last}, others reach {longest}")


def check_runs(runs: Sequence[RunRecord]) -> None:
    """Cross-run checks: duplicate identities and runs shorter than their agent/env peers."""
    _flag_duplicates(runs)
    _flag_short_runs(runs)


def load_runs(
    root: str | os.PathLike[str], skip: tuple[str | os.PathLike[str], ...] = (), progress: bool | None = None
) -> list[RunRecord]:
    """Discover, load and cross-check every run under ``root``; ``progress=None`` shows a bar for many runs."""
    paths = find_run_dirs(root, skip)
    show = len(paths) >= PROGRESS_MIN_RUNS if progress is None else progress
    runs = [load_run(p) for p in tqdm(paths, desc="loading runs", unit="run", disable=not show, file=sys.stderr)]
    check_runs(runs)
    return runs
