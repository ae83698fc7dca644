"""A run's ``summary.json``: what both training paths (SB3 and the population engine) write at its start, end or
failure. Imports neither SB3 nor gymnasium: a plan, a controller and an eval callback are read duck-typed."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from experiment.layout import SUMMARY_FILE, atomic_write_json, last_fraction_mean

VERSIONED_PACKAGES = ("torch", "stable-baselines3", "gymnasium", "numpy", "hydra-core", "sparse_rl")


def _score(eval_results: list) -> float | None:
    """The paper's per-run score (:func:`experiment.layout.last_fraction_mean`), episodes averaged first."""
    if len(eval_results) == 0:
        return None
    return last_fraction_mean(np.asarray(eval_results, dtype=float).mean(axis=1))


def format_score(score: float | None) -> str:
    """A score as people read it: 4 significant digits, no exponent (``-2.338``, ``4512``); ``none`` if absent.

    ``summary.json`` keeps the full value; this is only for the lines a run prints.
    """
    if score is None:
        return "none"
    if abs(score) >= 1000:
        return f"{score:.0f}"
    return f"{score:.4g}"


@functools.cache
def code_commit() -> str | None:
    """The git commit of this checkout (``+dirty`` with uncommitted changes), or ``None`` outside a git checkout.

    Recorded in ``summary.json`` so a study's table says which code made each run (docs/design.md decision 39).
    """
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def nm_recipe(sparsity: Any) -> dict[str, Any]:
    """The N:M recipe keys of a ``sparsity`` config node as JSON data (what :func:`experiment.layout.recipe_tag`
    reads back when ``analyze`` names the run's method)."""
    stages = sparsity.get("structure_decay")
    return {
        "structure_decay": stages if stages is None or isinstance(stages, str) else [str(s) for s in stages],
        "mask_decay": sparsity.get("mask_decay"),
        "sr_ste": bool(sparsity.get("sr_ste", False)),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def run_summary(
    plan: Any, status: str, controller: Any, eval_cb: Any, wall: float, steps: int, engine: str = "sb3", **extra: Any
) -> dict:
    """``sparsity`` is the requested sparsity; ``sparsity_reached`` the one the networks hold (kernels only);
    ``engine`` what trained the run: ``sb3`` (SB3's own loop) or ``population`` (the population engine)."""
    stats = controller.stats()
    return {
        "status": status,
        "engine": engine,
        "agent": plan.agent.name,
        "env": plan.env.name,
        "method": plan.method,
        "wide": bool(plan.cfg.sparsity.wide),
        "ift": plan.cfg.sparsity.get("ift"),
        "structure": plan.sparsity.structure,
        "nm_recipe": nm_recipe(plan.cfg.sparsity),
        "sparsity": plan.sparsity.sparsity,
        "group_sparsity": plan.sparsity.group_sparsity,
        "sparsity_reached": stats["sparsity"],
        "seed": int(plan.cfg.seed),
        "score": _score(eval_cb.evaluations_results) if eval_cb is not None else None,
        "score_protocol": "mean of the last 10% of evaluations (deterministic policy)",
        "num_timesteps": steps,
        "params": {k: stats[k] for k in ("active", "total", "active_with_bias", "total_with_bias")},
        "param_convention": "active = non-masked kernel weights; *_with_bias adds all biases (the paper's logging)",
        "groups": stats["groups"],
        "topology": {"num_updates": stats["num_updates"], "gradient_steps": controller.clock},
        "wall_time_s": wall,
        "env_steps_per_s": steps / wall if wall > 0 else None,
        "versions": _versions(),
        "code_commit": code_commit(),
        **extra,
    }


def final_checks(run_dir: Any, controller: Any, summary: dict) -> None:
    """``summary['checks']`` of a completed run (both paths): did the schedule reach its final allocation (a warning
    on stderr if not)."""
    problem = controller.final_allocation_problem()
    summary["checks"] = {"final_allocation": "failed" if problem else "passed"}
    if problem:
        summary["checks"]["final_allocation_problem"] = problem
        print(f"warning: {run_dir}: the final sparsity allocation was not reached: {problem}", file=sys.stderr)


def record_failure(plan: Any, error: BaseException, status: str = "failed") -> None:
    """Make sure the run directory says it failed (or was ``interrupted``); train() writes a detailed summary when it
    got that far, and that one is kept."""
    path = plan.run_dir / SUMMARY_FILE
    try:
        if json.loads(path.read_text()).get("status") == status:
            return
    except (OSError, ValueError):
        pass
    identity = {"agent": plan.agent.name, "env": plan.env.name, "method": plan.method, "sparsity": plan.sparsity.sparsity}
    identity["structure"] = plan.sparsity.structure
    atomic_write_json(path, {"status": status, "error": repr(error), "seed": int(plan.cfg.seed), **identity})
